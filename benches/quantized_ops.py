"""Benchmark of whole quantized ops (q_impl, clear executor) against numpy baselines.

Prints ONE JSON object. Build the extension in release mode first: ``maturin develop -r``.

* Hidden Gemm 2048x256 @ 256x128 (8-bit input, asymmetric 8-bit weights, float bias):
  ``QuantizedGemm.q_impl`` (re-quantization rule, zp-corrected integer matmul, rescale,
  output quantization) vs the same formula written in plain numpy (int64 matmul, float64
  rescale, rint/clip) and vs float32 BLAS on the dequantized operands (a float Gemm alone).
* Hidden Conv 64x8x32x32 -> 16 channels, 3x3, pad 1: ``QuantizedConv.q_impl`` vs a numpy
  int64 im2col of the same formula.
* Tracing overhead is not measured here: circuits are compiled once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fhequant.quantization import QuantizationOptions, QuantizedArray
from fhequant.quantized import QuantizedConv, QuantizedGemm


def race(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best time of each function, run in turns so that machine load hits all alike."""
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _requant_formula(v: np.ndarray, op: Any) -> np.ndarray:
    s, z = op.output_quant_params.scale, op.output_quant_params.zero_point
    return np.clip(np.rint(v / s + z), 0, 2**op.n_bits - 1).astype(np.int64)


def gemm_case(repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, 256)).astype(np.float32)
    w = rng.normal(0.2, 1.0, size=(128, 256)).astype(np.float32)
    b = rng.normal(size=128).astype(np.float32)
    opts = QuantizationOptions(8, is_signed=True)
    q_w = QuantizedArray(8, w, options=QuantizationOptions(8, is_signed=True))
    q_b = QuantizedArray(8, b, options=QuantizationOptions(8, is_signed=True))
    op = QuantizedGemm(8, "gemm", constant_inputs={1: q_w, 2: q_b}, input_quant_opts=opts, transB=1)
    op.calibrate(x)
    q_x = QuantizedArray(8, x, options=opts)
    z_x, z_w = int(q_x.quantizer.zero_point), int(q_w.quantizer.zero_point)
    m = q_x.quantizer.scale * q_w.quantizer.scale
    wt = np.ascontiguousarray(q_w.qvalues.T)
    sum_w = z_x * wt.sum(axis=0, keepdims=True)
    final = 256 * z_x * z_w

    def numpy_formula() -> np.ndarray:
        acc = q_x.qvalues @ wt - z_w * q_x.qvalues.sum(axis=1, keepdims=True)
        v = m * (acc.astype(np.float64) + final - sum_w) + b
        return _requant_formula(v, op)

    xd, wd = q_x.dequant().astype(np.float32), q_w.dequant().astype(np.float32).T.copy()
    np.testing.assert_array_equal(op.q_impl(q_x).qvalues, numpy_formula())
    t = race(
        {
            "fhequant": lambda: op.q_impl(q_x),
            "numpy_int64": numpy_formula,
            "blas_float32": lambda: xd @ wd,
        },
        repeats,
    )
    return {
        "shape": "2048x256 @ 256x128",
        "seconds": t,
        "speedup_vs_numpy_int64": t["numpy_int64"] / t["fhequant"],
        "ratio_to_blas_float32": t["fhequant"] / t["blas_float32"],
    }


def conv_case(repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 8, 32, 32)).astype(np.float32)
    w = rng.normal(0.1, 1.0, size=(16, 8, 3, 3)).astype(np.float32)
    opts = QuantizationOptions(8, is_signed=True)
    q_w = QuantizedArray(8, w, options=QuantizationOptions(8, is_signed=True))
    op = QuantizedConv(
        8,
        "conv",
        constant_inputs={1: q_w},
        input_quant_opts=opts,
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
    )
    op.calibrate(x)
    q_x = QuantizedArray(8, x, options=opts)
    z_x, z_w = int(q_x.quantizer.zero_point), int(q_w.quantizer.zero_point)
    m = q_x.quantizer.scale * q_w.quantizer.scale
    wc = (q_w.qvalues - z_w).reshape(16, -1).T.copy()
    sum_w = z_x * q_w.qvalues.sum(axis=(1, 2, 3)).reshape(1, 16, 1, 1)
    final = 72 * z_x * z_w

    def numpy_formula() -> np.ndarray:
        xp = np.pad(q_x.qvalues, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=z_x)
        win = sliding_window_view(xp, (3, 3), axis=(2, 3))
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 72)
        acc = (cols @ wc).reshape(64, 32, 32, 16).transpose(0, 3, 1, 2)
        v = m * (acc.astype(np.float64) + final - sum_w)
        return _requant_formula(v, op)

    np.testing.assert_array_equal(op.q_impl(q_x).qvalues, numpy_formula())
    t = race({"fhequant": lambda: op.q_impl(q_x), "numpy_int64_im2col": numpy_formula}, repeats)
    return {
        "shape": "64x8x32x32 * 16x8x3x3, pad 1",
        "seconds": t,
        "speedup_vs_numpy_int64_im2col": t["numpy_int64_im2col"] / t["fhequant"],
    }


def main() -> None:
    repeats = int(os.environ.get("FHEQUANT_BENCH_REPEATS", "5"))
    print(json.dumps({"gemm_hidden": gemm_case(repeats), "conv_hidden": conv_case(repeats)}))


if __name__ == "__main__":
    main()
