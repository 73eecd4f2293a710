"""The ``fhequant demo``: an MLP on scikit-learn's digits, quantized and run under FHE.

The steps are functions so that ``benches/fhe.py`` reuses them: :func:`load_digits_split`,
:func:`train_mlp`, :func:`accuracy`, and :func:`run_demo` which prints the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fhequant.errors import MissingDependencyError
from fhequant.fhe.run import ensure_keys
from fhequant.quantized.build import build_quantized_module

__all__ = ["accuracy", "load_digits_split", "measure", "run_demo", "train_mlp"]


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (no download), scaled to [0, 1], 75/25 split.

    Args:
        seed: the shuffle seed of the split.

    Returns:
        x_train, x_test (float32, (n, 64)), y_train, y_test (int64).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a test dependency
        raise MissingDependencyError(
            "the demo needs scikit-learn: pip install scikit-learn"
        ) from exc
    data = load_digits()
    x = (np.asarray(data.data, dtype=np.float32) / 16.0).astype(np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = len(x) // 4
    test, train = order[:n_test], order[n_test:]
    return x[train], x[test], y[train], y[test]


def train_mlp(
    x: np.ndarray,
    y: np.ndarray,
    hidden: Sequence[int] = (32,),
    epochs: int = 40,
    seed: int = 0,
    batch_size: int = 64,
) -> Any:
    """Train a ReLU MLP (torch, mini-batch AdamW, lr 3e-3, weight decay 1e-2) on (x, y).

    Args:
        x: float32 features.
        y: int64 labels.
        hidden: hidden layer sizes.
        epochs: passes over the shuffled training rows.
        seed: torch seed (initial weights and the shuffles).
        batch_size: rows per optimizer step.

    Returns:
        The trained torch.nn.Sequential (eval mode).
    """
    import torch

    torch.manual_seed(seed)
    sizes = [x.shape[1], *hidden, int(y.max()) + 1]
    layers: list[Any] = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    shuffle = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=shuffle)
        for start in range(0, len(xt), batch_size):
            rows = order[start : start + batch_size]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[rows]), yt[rows]).backward()
            opt.step()
    return net.eval()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float(np.mean(np.argmax(logits, axis=1) == y) * 100.0)


def measure(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run fn and return (its result, wall seconds)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def run_demo(
    samples: int = 1, hidden: Sequence[int] = (32,), log: Callable[[str], Any] = print
) -> dict[str, Any]:
    """Train, quantize (6 bits, rounding_threshold_bits=6), compile, simulate and execute.

    Args:
        samples: test rows to run under real encryption.
        hidden: hidden layer sizes of the MLP.
        log: where to print progress and the tables.

    Returns:
        The figures (accuracies in %, times in seconds, bit width, PBS count, agreement).
    """
    import torch

    x_train, x_test, y_train, y_test = load_digits_split()
    log(f"digits: {len(x_train)} train / {len(x_test)} test rows, 64 features")
    net, t_train = measure(lambda: train_mlp(x_train, y_train, hidden))
    with torch.no_grad():
        float_logits = net(torch.from_numpy(x_test)).numpy()
    module, t_quant = measure(
        lambda: build_quantized_module(net, x_train, n_bits=6, rounding_threshold_bits=6)
    )
    log(f"compiling the FHE circuit over {len(x_train)} calibration rows (a few seconds) ...")
    circuit, t_compile = measure(lambda: module.compile(x_train))
    clear_logits = module.forward(x_test, fhe="disable")
    log(f"simulating FHE on the {len(x_test)} test rows ...")
    sim_logits, t_sim = measure(lambda: module.forward(x_test, fhe="simulate"))
    log("generating the FHE keys (tens of seconds) ...")
    _, t_keygen = measure(lambda: ensure_keys(circuit))
    figures: dict[str, Any] = {
        "float_accuracy": accuracy(float_logits, y_test),
        "clear_accuracy": accuracy(clear_logits, y_test),
        "simulate_accuracy": accuracy(sim_logits, y_test),
        "max_bit_width": int(circuit.graph.maximum_integer_bit_width()),
        "predicted_max_bit_width": module.bitwidth_report().predicted_max_bit_width,
        "pbs_count": int(circuit.programmable_bootstrap_count),
        "train_s": t_train,
        "quantize_s": t_quant,
        "compile_s": t_compile,
        "simulate_s": t_sim,
        "keygen_s": t_keygen,
    }
    log(
        _table(
            [
                ("float accuracy", f"{figures['float_accuracy']:.1f} %"),
                ("clear quantized accuracy", f"{figures['clear_accuracy']:.1f} %"),
                ("FHE-simulated accuracy", f"{figures['simulate_accuracy']:.1f} %"),
                (
                    "max bit width",
                    f"{figures['max_bit_width']} (predicted {figures['predicted_max_bit_width']})",
                ),
                ("PBS count", str(figures["pbs_count"])),
                ("compile time", f"{t_compile:.2f} s"),
                ("keygen time", f"{t_keygen:.2f} s"),
            ]
        )
    )
    n = max(0, min(int(samples), len(x_test)))
    if n:
        q = module.quantize_input(x_test[:n])
        clear_q = module.quantized_forward(q)
        log(f"running {n} test row{'s' if n > 1 else ''} under encryption (seconds each) ...")
        enc_q, t_exec = measure(lambda: module.quantized_forward(q, fhe="execute"))
        figures["execute_s_per_sample"] = t_exec / n
        figures["execute_samples"] = n
        figures["execute_exact_match"] = float(np.mean(np.all(enc_q == clear_q, axis=1)) * 100)
        figures["execute_argmax_match"] = float(
            np.mean(np.argmax(enc_q, axis=1) == np.argmax(clear_q, axis=1)) * 100
        )
        log(
            _table(
                [
                    ("encrypted samples", str(n)),
                    ("latency per sample", f"{figures['execute_s_per_sample']:.2f} s"),
                    ("same integers as clear", f"{figures['execute_exact_match']:.1f} %"),
                    ("same prediction as clear", f"{figures['execute_argmax_match']:.1f} %"),
                ]
            )
        )
    return figures
