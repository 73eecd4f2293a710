"""Benchmark of post-training calibration and clear integer inference (prints ONE JSON object).

Baselines are measured in the same run: the float ``NumpyModule`` forward of the same rows.

* calibration: MLP 64-128-128-10 at 6 bits on 100k rows; CNN Conv(1→8,3,p1)-ReLU-
  Conv(8→16,3,s2,p1)-ReLU-Linear(256→10) at 5 bits on 10k rows of 1x8x8
  (targets: MLP <= 0.8 s, CNN <= 0.16 s, calibration <= 3x the float forward);
* clear inference: forward(fhe="disable") on 10k rows of both (MLP target <= 26 ms);
* memory: peak RSS (VmHWM) of a streamed calibration (a generator of 10k-row batches) of the
  MLP on 100k vs 1M rows, each in a fresh subprocess (target ratio <= 1.3).

Usage: ``python benches/ptq.py [--quick]`` (``--quick`` uses 10x fewer rows).
"""

from __future__ import annotations

import itertools
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fhequant import build_quantized_module
from fhequant.onnx import NumpyModule


def _model(nodes: list[Any], x_shape: list[Any], y_shape: list[Any], inits: dict[str, Any]) -> Any:
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def mlp_model() -> onnx.ModelProto:
    """MLP 64-128-128-10 with ReLU (torch Linear layout, transB = 1)."""
    rng = np.random.default_rng(0)
    sizes = [64, 128, 128, 10]
    nodes, inits, prev = [], {}, "x"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        inits[f"w{i}"] = (rng.normal(size=(b, a)) / np.sqrt(a)).astype(np.float32)
        inits[f"b{i}"] = (0.1 * rng.normal(size=b)).astype(np.float32)
        out = "y" if i == len(sizes) - 2 else f"g{i}"
        nodes.append(
            helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], name=f"fc{i}", transB=1)
        )
        if out != "y":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
    return _model(nodes, [None, 64], [None, 10], inits)


def cnn_model() -> onnx.ModelProto:
    """Conv(1→8,3,p1)-ReLU-Conv(8→16,3,s2,p1)-ReLU-Flatten-Linear(256→10)."""
    rng = np.random.default_rng(1)
    inits = {
        "w1": (rng.normal(size=(8, 1, 3, 3)) / 3).astype(np.float32),
        "b1": (0.1 * rng.normal(size=8)).astype(np.float32),
        "w2": (rng.normal(size=(16, 8, 3, 3)) / np.sqrt(72)).astype(np.float32),
        "b2": (0.1 * rng.normal(size=16)).astype(np.float32),
        "w3": (rng.normal(size=(10, 256)) / 16).astype(np.float32),
        "b3": (0.1 * rng.normal(size=10)).astype(np.float32),
    }
    nodes = [
        helper.make_node(
            "Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv",
            ["r1", "w2", "b2"],
            ["c2"],
            name="conv2",
            kernel_shape=[3, 3],
            pads=[1] * 4,
            strides=[2, 2],
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [None, 1, 8, 8], [None, 10], inits)


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    """The best wall time of ``repeat`` runs (seconds)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def calibration_case(model: onnx.ModelProto, x: np.ndarray, n_bits: int, repeat: int) -> Any:
    """Calibration vs float forward on the same rows, plus clear inference on 10k rows."""
    float_module = NumpyModule(model)
    t_float = best_of(lambda: float_module.forward(x), repeat)
    t_calib = best_of(lambda: build_quantized_module(model, x, n_bits=n_bits), repeat)
    module = build_quantized_module(model, x, n_bits=n_bits)
    x10k = x[:10_000]
    t_infer = best_of(lambda: module.forward(x10k, fhe="disable"), repeat + 2)
    t_float10k = best_of(lambda: float_module.forward(x10k), repeat + 2)
    return {
        "rows": int(x.shape[0]),
        "calibration_s": round(t_calib, 4),
        "float_forward_s": round(t_float, 4),
        "calibration_over_float": round(t_calib / t_float, 2),
        "clear_inference_10k_s": round(t_infer, 4),
        "float_forward_10k_s": round(t_float10k, 4),
        "clear_inference_over_float": round(t_infer / t_float10k, 2),
    }


def _batches(rows: int, batch: int = 10_000) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(7)
    done = 0
    while done < rows:
        n = min(batch, rows - done)
        yield rng.normal(size=(n, 64)).astype(np.float32)
        done += n


def peak_rss_child(rows: int) -> None:
    """Run in a subprocess: streamed calibration of the MLP; prints peak RSS (MiB) and time."""
    model = mlp_model()
    start = time.perf_counter()
    build_quantized_module(model, _batches(rows), n_bits=6)
    elapsed = time.perf_counter() - start
    print(json.dumps({"peak_rss_mib": round(_peak_rss_mib(), 1), "seconds": round(elapsed, 2)}))


def _peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM (reset at exec; ru_maxrss keeps the parent's peak)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss(rows: int) -> Any:
    """Peak RSS of a streamed calibration on ``rows`` rows, in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(rows)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    quick = "--quick" in sys.argv
    scale = 10 if quick else 1
    rng = np.random.default_rng(3)
    x_mlp = rng.normal(size=(100_000 // scale, 64)).astype(np.float32)
    x_cnn = rng.normal(size=(10_000 // scale, 1, 8, 8)).astype(np.float32)
    result: dict[str, Any] = {
        "mlp_64_128_128_10_6bits": calibration_case(mlp_model(), x_mlp, 6, repeat=2),
        "cnn_5bits": calibration_case(cnn_model(), x_cnn, 5, repeat=3),
    }
    small, large = 100_000 // scale, 1_000_000 // scale
    rss_small, rss_large = peak_rss(small), peak_rss(large)
    result["streamed_peak_rss"] = {
        f"rows_{small}": rss_small,
        f"rows_{large}": rss_large,
        "ratio": round(rss_large["peak_rss_mib"] / rss_small["peak_rss_mib"], 3),
    }
    result["targets"] = {
        "mlp_calibration_s": 0.8,
        "cnn_calibration_s": 0.16,
        "calibration_over_float": 3.0,
        "mlp_clear_inference_10k_s": 0.026,
        "rss_ratio": 1.3,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rss-child":
        peak_rss_child(int(sys.argv[2]))
    else:
        main()
