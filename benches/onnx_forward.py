"""NumpyModule forward vs the same computation written directly in numpy (one JSON object).

* MLP 64-128-128-10 (ReLU) on 100k rows: float32 Gemms.
* CNN Conv(1→8, 3, p1)-ReLU-Conv(8→16, 3, s2, p1)-ReLU-Linear(256→10) on 10k 1x8x8 images:
  Conv in float64 with a float32 padding buffer (docs/contract.md §0), Linear in float64 (its input
  is).

Each timing is the best of ``REPEATS`` runs, the two sides alternating; ratio = NumpyModule /
direct numpy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from fhequant.onnx import NumpyModule

REPEATS = 9


def best_of_interleaved(
    first: Callable[[], Any], second: Callable[[], Any]
) -> tuple[float, Any, float, Any]:
    """Best times of two functions run alternately (the machine is shared: noise hits both)."""
    best = [float("inf"), float("inf")]
    outs: list[Any] = [None, None]
    for _ in range(REPEATS):
        for i, fn in enumerate((first, second)):
            t0 = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best[0], outs[0], best[1], outs[1]


def params(layer: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    return layer.weight.detach().numpy(), layer.bias.detach().numpy()


def direct_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """float32 zero-padding buffer, then a float64 im2col product (what docs/contract.md §0
    specifies)."""
    n, c, h, wd = x.shape
    xp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad), dtype=np.float32)
    xp[:, :, pad : pad + h, pad : pad + wd] = x
    k = w.shape[2]
    win = np.lib.stride_tricks.sliding_window_view(xp.astype(np.float64), (k, k), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]
    y = np.tensordot(win, w.astype(np.float64), axes=([1, 4, 5], [1, 2, 3]))  # (N, H, W, O)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) + b.astype(np.float64).reshape(1, -1, 1, 1)


def bench_mlp(rows: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    ).eval()
    x = np.random.default_rng(0).normal(size=(rows, 64)).astype(np.float32)
    module = NumpyModule.from_torch(model, x)
    (w1, b1), (w2, b2), (w3, b3) = (params(model[i]) for i in (0, 2, 4))

    def direct() -> np.ndarray:
        h = np.maximum(x @ w1.T + b1, 0)
        h = np.maximum(h @ w2.T + b2, 0)
        return h @ w3.T + b3

    t_mod, y_mod, t_np, y_np = best_of_interleaved(lambda: module(x), direct)
    return {
        "rows": rows,
        "numpy_module_s": round(t_mod, 5),
        "direct_numpy_s": round(t_np, 5),
        "ratio": round(t_mod / t_np, 3),
        "max_abs_diff": float(np.abs(y_mod - y_np).max()),
    }


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(y.flatten(1))


def bench_cnn(rows: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = CNN().eval()
    x = np.random.default_rng(1).normal(size=(rows, 1, 8, 8)).astype(np.float32)
    module = NumpyModule.from_torch(model, x)
    (w1, b1), (w2, b2), (w3, b3) = params(model.c1), params(model.c2), params(model.fc)

    def direct() -> np.ndarray:
        h = np.maximum(direct_conv(x, w1, b1, 1, 1), 0)
        h = np.maximum(direct_conv(h, w2, b2, 2, 1), 0)
        return h.reshape(rows, -1) @ w3.T + b3

    t_mod, y_mod, t_np, y_np = best_of_interleaved(lambda: module(x), direct)
    return {
        "rows": rows,
        "numpy_module_s": round(t_mod, 5),
        "direct_numpy_s": round(t_np, 5),
        "ratio": round(t_mod / t_np, 3),
        "max_abs_diff": float(np.abs(y_mod - y_np).max()),
    }


def main() -> None:
    result = {
        "benchmark": "onnx_forward",
        "repeats": REPEATS,
        "mlp_64_128_128_10": bench_mlp(100_000),
        "cnn_8x8": bench_cnn(10_000),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
