"""One integer GEMM for both calibration passes of a quantized Gemm (issue 16).

Per 4096-row block of 6-bit activations and 6-bit-quantized weights, times (a) today's pair,
``matmul_extremes_f64(exact=False)`` (float32 filter GEMM) then ``int_matmul_rescale_quant``
(integer GEMM + epilogue), against (b) ``int_matmul_acc_extremes(keep=True)`` (integer GEMM
as the filter, accumulators kept) then ``int_acc_rescale_quant`` (epilogue only), in the same
run. Prints JSON: per shape the best-of-``repeat`` times, their ratio, and the fraction of
tasks the new filter verified exactly.

Run: ``PYTHONPATH=$PWD/python nice -n 5 python benches/acc_extremes.py [repeat]``
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fhequant import _core


def best(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def case(k: int, n: int, repeat: int, rng: np.random.Generator) -> dict[str, Any]:
    a = np.clip(np.round(np.abs(rng.normal(0, 10, (4096, k)))), 0, 63).astype(np.int8)
    w = rng.standard_normal((k, n)) / np.sqrt(k)
    b = rng.standard_normal(n) * 0.1
    step = float(w.max() - w.min()) / 63
    z_w = int(np.round(-w.min() / step)) - 32
    wq = np.clip(np.round(w / step) + z_w, -32, 31).astype(np.int64)
    s, z = 0.05, 0.0
    sub = np.full(n, 3.0)
    mul = np.full(n, s * step)
    tail = (0.08, 0.0, -32.0, 31.0, "int8")

    def today() -> None:
        _core.matmul_extremes_f64(a, w, b, s, z)
        a64 = a.astype(np.int64)[None]
        _core.int_matmul_rescale_quant(a64, wq[None], z_w, 0, 0.0, sub, mul, b, *tail)

    def fused() -> None:
        acc, *_ = _core.int_matmul_acc_extremes(a, wq, z_w, w, b, s, z, True)
        assert acc is not None
        _core.int_acc_rescale_quant(acc, 0, 0.0, sub, mul, b, *tail)

    t_today, t_fused = best(today, repeat), best(fused, repeat)
    _core.acc_extremes_filter_counts(reset=True)
    _core.int_matmul_acc_extremes(a, wq, z_w, w, b, s, z, False)
    tasks, verified, fallbacks, refined = _core.acc_extremes_filter_counts()
    return {
        "shape": [4096, k, n],
        "today_ms": round(t_today * 1e3, 3),
        "acc_ms": round(t_fused * 1e3, 3),
        "ratio_today_over_acc": round(t_today / t_fused, 3),
        "verified_fraction": round(verified / max(tasks, 1), 4),
        "fallbacks": fallbacks,
        "refined_values": refined,
    }


def main() -> None:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    rng = np.random.default_rng(16)
    print(json.dumps({"cases": [case(k, 128, repeat, rng) for k in (64, 128)]}))


if __name__ == "__main__":
    main()
