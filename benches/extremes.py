"""Benchmark of the filter-then-verify extremes kernels against the exact ones, same run.

Prints ONE JSON object. Build the extension in release mode first: ``maturin develop -r``.

The statistics pass of calibration reduces every Gemm/MatMul/Conv result to its min and max
with ``_core.matmul_extremes_f32/_f64`` and ``_core.conv2d_extremes_f64``. By default they
filter with a float32 approximation and a rigorous error bound and run the exact sequential
sums only where an extreme can be; ``exact=True`` runs the exact sums everywhere (the old
kernels). Both run on the same inputs, in turns, and must return the same bits. Cases are the
statistics calls of ``benches/calibration_vs_ort.py``'s models:

* the MLP 64-128-128-10 layers on 100k rows: float64 input, int8/uint6 stored integers
  dequantized on the fly, and float32;
* the CNN convs on 10k images of 1x8x8: Conv(1->8, 3, p1) on dequantized int8 and
  Conv(8->16, 3, s2, p1) on float64.

Each case reports the best wall time of both (``new_s``, ``old_s``), their ratio
``speedup = old_s / new_s``, and the same from process CPU time (``cpu_speedup``), which is
less disturbed when other processes share the cores.

With ``--end-to-end``, ``build_quantized_module`` on the MLP (100k rows, 6 bits) and the CNN
(10k rows, 5 bits) of ``benches/calibration_vs_ort.py`` is timed the same way, with
``fused_stats.EXACT_EXTREMES`` off (new) and on (old) in alternate runs.

Usage: ``python benches/extremes.py [--quick] [--repeat N] [--end-to-end]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fhequant import _core, build_quantized_module
from fhequant.quantized import fused_stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

Times = dict[str, float]


def race(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[Times, Times]:
    """Best wall and CPU time of each function, run in turns so that load hits all alike."""
    wall = dict.fromkeys(fns, float("inf"))
    cpu = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name] = min(wall[name], time.perf_counter() - w0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    return wall, cpu


def case(fn: Callable[..., Any], args: tuple[Any, ...], repeats: int) -> dict[str, Any]:
    new, old = fn(*args), fn(*args, exact=True)
    same = np.float64(new[0]).tobytes() == np.float64(old[0]).tobytes() and (
        np.float64(new[1]).tobytes() == np.float64(old[1]).tobytes() and new[2] == old[2]
    )
    wall, cpu = race({"new": lambda: fn(*args), "old": lambda: fn(*args, exact=True)}, repeats)
    return {
        "new_s": round(wall["new"], 5),
        "old_s": round(wall["old"], 5),
        "speedup": round(wall["old"] / wall["new"], 2),
        "cpu_speedup": round(cpu["old"] / max(cpu["new"], 1e-9), 2),
        "same_bits": bool(same),
    }


def end_to_end(rows: int, images: int, repeats: int) -> dict[str, Any]:
    """Calibration of the MLP and the CNN with the filter (new) and without it (old)."""
    from ptq import cnn_model, mlp_model

    rng = np.random.default_rng(3)
    models = {
        "mlp": (mlp_model(), rng.normal(size=(rows, 64)).astype(np.float32), 6),
        "cnn": (cnn_model(), rng.normal(size=(images, 1, 8, 8)).astype(np.float32), 5),
    }
    result: dict[str, Any] = {}
    for name, (model, x, n_bits) in models.items():

        def run(exact: bool, model: Any = model, x: np.ndarray = x, n_bits: int = n_bits) -> None:
            fused_stats.EXACT_EXTREMES = exact
            try:
                build_quantized_module(model, x, n_bits=n_bits)
            finally:
                fused_stats.EXACT_EXTREMES = False

        wall, cpu = race({"new": lambda: run(False), "old": lambda: run(True)}, repeats)
        result[name] = {
            "new_s": round(wall["new"], 4),
            "old_s": round(wall["old"], 4),
            "speedup": round(wall["old"] / wall["new"], 3),
            "new_cpu_s": round(cpu["new"], 4),
            "old_cpu_s": round(cpu["old"], 4),
            "cpu_speedup": round(cpu["old"] / cpu["new"], 3),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer rows")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--end-to-end", action="store_true", help="also time calibrations")
    args = parser.parse_args()
    rows = 10_000 if args.quick else 100_000
    images = 1_000 if args.quick else 10_000
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"rows": rows, "images": images, "cpus": os.cpu_count(), "cases": {}}
    cases = out["cases"]
    for k, m in ((64, 128), (128, 128), (128, 10)):
        w = rng.standard_normal((k, m)) / np.sqrt(k)
        b = rng.standard_normal(m) * 0.1
        a = rng.standard_normal((rows, k))
        q = rng.integers(0, 64, (rows, k), dtype=np.int8)  # uint6 codes, as the MLP stores them
        cases[f"matmul_f64_{k}x{m}"] = case(_core.matmul_extremes_f64, (a, w, b), args.repeat)
        cases[f"matmul_dequant_{k}x{m}"] = case(
            _core.matmul_extremes_f64, (q, w, b, 0.0417, 0.0), args.repeat
        )
        f32 = (a.astype(np.float32), w.astype(np.float32), b.astype(np.float32))
        cases[f"matmul_f32_{k}x{m}"] = case(_core.matmul_extremes_f32, f32, args.repeat)
    x = rng.integers(-128, 128, (images, 1, 8, 8), dtype=np.int8)
    w1 = rng.standard_normal((8, 1, 3, 3)) / 3.0
    g1 = ((1, 1), (1, 1), (1, 1), (1, 1), 1, rng.standard_normal(8) * 0.1)
    cases["conv1_dequant"] = case(_core.conv2d_extremes_f64, (x, w1, *g1, 0.01, 0.0), args.repeat)
    x2 = np.maximum(rng.standard_normal((images, 8, 8, 8)), 0.0)
    w2 = rng.standard_normal((16, 8, 3, 3)) / np.sqrt(72)
    g2 = ((2, 2), (1, 1), (1, 1), (1, 1), 1, rng.standard_normal(16) * 0.1)
    cases["conv2_f64"] = case(_core.conv2d_extremes_f64, (x2, w2, *g2), args.repeat)
    out["all_same_bits"] = all(c["same_bits"] for c in cases.values())
    if args.end_to_end:
        out["end_to_end"] = end_to_end(rows, images, args.repeat)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
