"""Quantizer timings against plain numpy baselines measured in the same run.

Prints one JSON object: for each case the best-of-N wall time of fhequant and of the
baseline (the same formula written directly with numpy, or json.dumps of the raw list),
and their ratio (fhequant / baseline; 1.0 means no overhead).

Usage: python benches/bench_quantizers.py [n_elements]
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fhequant import QuantizedArray

REPEATS = 5


def best_time(function: Callable[[], Any]) -> float:
    """Best wall time of REPEATS calls, in seconds."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def numpy_construction(x: np.ndarray, n_bits: int) -> np.ndarray:
    """QuantizedArray(n_bits, x) written out: stats, uvalues, params, quant."""
    rmin, rmax = x.min(), x.max()
    np.unique(np.round(x, 2))
    scale = np.float64(rmax - rmin) / (2**n_bits - 1)
    zero_point = np.rint(-rmin * (2**n_bits - 1) / (rmax - rmin)).astype(np.int64)
    return np.clip(np.rint(x / scale + zero_point), 0, 2**n_bits - 1).astype(np.int64)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {"n_elements": n, "repeats": REPEATS}
    for dtype in (np.float32, np.float64):
        x = rng.normal(size=n).astype(dtype)
        array = QuantizedArray(8, x)
        quantizer = array.quantizer
        scale, zero_point = quantizer.scale, quantizer.zero_point
        cases = {
            "construct": (
                lambda x=x: QuantizedArray(8, x),
                lambda x=x: numpy_construction(x, 8),
            ),
            "quant": (
                lambda x=x, q=quantizer: q.quant(x),
                lambda x=x, s=scale, z=zero_point: np.clip(np.rint(x / s + z), 0, 255).astype(
                    np.int64
                ),
            ),
            "dequant": (
                lambda a=array, q=quantizer: q.dequant(a.qvalues),
                lambda a=array, s=scale, z=zero_point: s * (a.qvalues - np.float64(z)),
            ),
        }
        small = QuantizedArray(8, x[: n // 10])
        cases["dumps_10pct"] = (
            lambda a=small: a.dumps(),
            lambda a=small: json.dumps(
                [a.quantizer.dump_dict()["n_bits"], a.values.tolist(), a.qvalues.tolist()]
            ),
        )
        for name, (ours, baseline) in cases.items():
            t_ours, t_base = best_time(ours), best_time(baseline)
            results[f"{np.dtype(dtype).name}.{name}"] = {
                "fhequant_s": round(t_ours, 6),
                "baseline_s": round(t_base, 6),
                "ratio": round(t_ours / t_base, 3),
            }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
