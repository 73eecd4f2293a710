"""Benchmark of the integer kernels against numpy baselines measured in the same run.

Prints ONE JSON object. Build the extension in release mode first: ``maturin develop -r``.

* Gemm 512x512x512, inputs in the uint8 range, weights in the int8 range, with symmetric
  (z_w = 0) and asymmetric (z_w = 5) weights: fhequant ``integer_gemm`` vs numpy int64
  matmul (+ the z_w correction) and vs float64 BLAS (numpy float matmul of pre-converted
  arrays, i.e. BLAS alone).
* The MLP products (int_matmul_rescale of uint6 inputs and int8 weights, 4096x128x128 and
  100k x 128x128 / 100k x 64x128) with the u8 x i8 AVX-512 VNNI strategy vs the same kernel
  with that strategy switched off (``_core.int_vnni(False)``: the f32 strategy), and the
  Gemm 512 cases likewise.
* The CNN convs: 10k x 1x8x8 through Conv(1->8, 3, p1) and Conv(8->16, 3, s2, p1), vs a numpy
  im2col (int64 matmul), a float64 im2col (BLAS) and fhequant without the VNNI strategy.
* The calibration's table kernels on a 4096x128 block (a Relu between MLP layers): int8 or
  int16 integers of a 64-value range, bell-shaped, ``int_presence`` and ``int_lookup``
  into int8, int16 and int64 tables, vs numpy (``np.take`` of the shifted indices, a
  ``bincount``) and, when ``FHEQUANT_BASELINE_CORE`` names another build of ``_core*.so``
  (the code before a change), vs that build in the same run (``--only tables`` runs just
  these).
* The AVX2 i16 (``vpmaddwd``) strategy against the f32-sgemm strategy in the same run
  (``_core.int_i16(False)``; VNNI switched off for both): the fused calibration kernels
  ``int_matmul_rescale_quant`` on the MLP 64-128-128-10 at 100k rows with 6-bit inputs and
  weights, and 8-bit ones, and ``int_conv2d_rescale_quant`` on the two CNN convs (5 bits; the
  Conv's i16 strategy is off by default and switched on here with ``_core.int_i16_conv``).
* The AVX2 u8 x i8 (``vpmaddubsw``) strategy against the i16 one in the same run
  (``_core.int_u8i8_avx2(False)``; VNNI off for both): GMAC/s of ``int_matmul`` and of the
  fused ``int_matmul_rescale_quant`` on 4096-row blocks of the MLP's products (64x128,
  128x128, 128x10) with 6-bit and 5-bit operands (``--only u8i8`` runs just these).
* The AVX2 epilogue of the fused kernels against the scalar one in the same run
  (``_core.int_vector_epilogue(False)``), alternating: the MLP's fused calls
  (16384x64->128 and 16384x128->128, 6-bit values, the MLP's operands) and
  ``int_acc_rescale_quant`` on a 16384x128 int32 accumulator, then
  ``build_quantized_module`` of the MLP (100k rows, 6 bits) and of the CNN (10k rows, 5 bits)
  (``--only epilogue`` runs just these; ``FHEQUANT_EPILOGUE_ROWS`` scales the two builds).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fhequant import _core
from fhequant import kernels as ik

# Zero points of the conv benchmark.
Z_X, Z_W = 17, 3


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    return race({"f": fn}, repeats)["f"]


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


def im2col_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int, z_x: int) -> np.ndarray:
    """Baseline conv: pad, gather windows, one matmul in the dtype of x and w."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=z_x)
    o, c, kh, kw = w.shape
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    n, _, oh, ow = win.shape[:4]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)
    out = cols @ w.reshape(o, -1).T
    return out.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)


def gemm_case(z_w: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (512, 512), endpoint=True)
    w = rng.integers(-128, 127, (512, 512), endpoint=True)
    xf, wf = x.astype(np.float64), w.astype(np.float64)

    def numpy_int() -> np.ndarray:
        acc = x @ w
        return acc - z_w * x.sum(axis=-1, keepdims=True) if z_w else acc

    assert np.array_equal(ik.integer_gemm(x, w, 0, z_w)[0], numpy_int())
    t = race({"rust": lambda: ik.integer_gemm(x, w, 0, z_w), "blas": lambda: xf @ wf}, repeats)
    t_rust, t_blas = t["rust"], t["blas"]
    t_int = best_of(numpy_int, max(1, repeats // 5))
    return {
        "z_w": z_w,
        "fhequant_s": t_rust,
        "numpy_int64_s": t_int,
        "float64_blas_s": t_blas,
        "speedup_vs_numpy_int64": t_int / t_rust,
        "ratio_to_float64_blas": t_rust / t_blas,
    }


def switched(fn: Callable[[], Any], on: bool) -> Callable[[], Any]:
    """``fn`` run with the VNNI strategy allowed (``on``) or not."""

    def run() -> Any:
        _core.int_vnni(on)
        try:
            return fn()
        finally:
            _core.int_vnni(True)

    return run


def vnni_case(m: int, k: int, n: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 63, (1, m, k), endpoint=True)
    w = rng.integers(-127, 127, (1, k, n), endpoint=True)
    sub, mul = rng.normal(size=n), rng.uniform(1e-3, 1e-2, size=n)

    def fused() -> np.ndarray:
        return _core.int_matmul_rescale(a, w, 3, 0, 0.5, sub, mul)

    new, old = switched(fused, True), switched(fused, False)
    assert np.array_equal(new().view(np.uint64), old().view(np.uint64))
    t = race({"new": new, "old": old}, repeats)
    return {
        "shape": [m, k, n],
        "strategy": _core.int_matmul_plan(a, w, 3)[0],
        "fhequant_s": t["new"],
        "without_vnni_s": t["old"],
        "speedup_vs_without_vnni": t["old"] / t["new"],
    }


def gemm_vnni_case(z_w: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (512, 512), endpoint=True)
    w = rng.integers(-128, 127, (512, 512), endpoint=True)

    def gemm() -> np.ndarray:
        return ik.integer_gemm(x, w, 0, z_w)[0]

    t = race({"new": switched(gemm, True), "old": switched(gemm, False)}, repeats)
    return {
        "z_w": z_w,
        "strategy": _core.int_matmul_plan(x[None], w[None], z_w)[0],
        "fhequant_s": t["new"],
        "without_vnni_s": t["old"],
        "speedup_vs_without_vnni": t["old"] / t["new"],
    }


def conv_case(repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {}
    layers = [
        ("conv1", (10_000, 1, 8, 8), (8, 1, 3, 3), 1),
        ("conv2", (10_000, 8, 8, 8), (16, 8, 3, 3), 2),
    ]
    for name, xs, ws, stride in layers:
        x = rng.integers(0, 255, xs, endpoint=True)
        w = rng.integers(-128, 127, ws, endpoint=True)
        wc = w - Z_W

        def fhe(x: np.ndarray = x, w: np.ndarray = w, stride: int = stride) -> np.ndarray:
            return ik.integer_conv(x, w, Z_X, Z_W, strides=(stride, stride), pads=(1, 1, 1, 1))[0]

        want = im2col_conv(x, wc, stride, 1, Z_X)
        assert np.array_equal(fhe(), want)
        xf, wf = x.astype(np.float64), wc.astype(np.float64)
        t = race(
            {
                "rust": fhe,
                "rust_without_vnni": switched(fhe, False),
                "int": lambda x=x, wc=wc, s=stride: im2col_conv(x, wc, s, 1, Z_X),
                "f64": lambda xf=xf, wf=wf, s=stride: im2col_conv(xf, wf, s, 1, Z_X),
            },
            repeats,
        )
        t_rust, t_int, t_f64 = t["rust"], t["int"], t["f64"]
        out[name] = {
            "input": list(xs),
            "weights": list(ws),
            "fhequant_s": t_rust,
            "without_vnni_s": t["rust_without_vnni"],
            "speedup_vs_without_vnni": t["rust_without_vnni"] / t_rust,
            "numpy_im2col_int64_s": t_int,
            "numpy_im2col_float64_s": t_f64,
            "speedup_vs_im2col_int64": t_int / t_rust,
            "speedup_vs_im2col_float64": t_f64 / t_rust,
        }
    return out


def baseline_core() -> Any:
    """The ``_core`` build named by ``FHEQUANT_BASELINE_CORE`` (loaded under another package
    name, next to the current one), or None."""
    path = os.environ.get("FHEQUANT_BASELINE_CORE")
    if not path:
        return None
    loader = importlib.machinery.ExtensionFileLoader("fhequant_baseline._core", path)
    spec = importlib.util.spec_from_file_location("fhequant_baseline._core", path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def table_case(dtype: Any, table_dtype: Any, repeats: int, old: Any) -> dict[str, Any]:
    """int_presence / int_lookup on one 4096x128 block of a 64-value range."""
    rng = np.random.default_rng(11)
    lo = -32
    # bell-shaped like a layer's output: the tail values of the range are rare
    q = np.clip(np.rint(rng.normal(size=(4096, 128)) * 10), lo, lo + 63).astype(dtype)
    table = rng.integers(-100, 100, size=64).astype(table_dtype)
    out = np.empty(q.shape, dtype=table_dtype)
    fns: dict[str, Callable[[], Any]] = {
        "lookup": lambda: _core.int_lookup(q, lo, table, out),
        "lookup_numpy": lambda: np.take(table, q.astype(np.intp) - lo, out=out),
        "presence": lambda: _core.int_presence(q, lo, 64),
        "presence_numpy": lambda: np.bincount(q.reshape(-1).astype(np.intp) - lo, minlength=64) > 0,
    }
    if old is not None:
        fns["lookup_old"] = lambda: old.int_lookup(q, lo, table, out)
        fns["presence_old"] = lambda: old.int_presence(q, lo, 64)
    t = race(fns, repeats)
    np.testing.assert_array_equal(_core.int_lookup(q, lo, table), table[q.astype(np.int64) - lo])
    row: dict[str, Any] = {
        "q": np.dtype(dtype).name,
        "table": np.dtype(table_dtype).name,
        "elements": q.size,
    }
    for kernel in ("lookup", "presence"):
        row[f"{kernel}_s"] = t[kernel]
        row[f"{kernel}_ns_per_element"] = round(t[kernel] / q.size * 1e9, 3)
        row[f"{kernel}_numpy_over_new"] = round(t[f"{kernel}_numpy"] / t[kernel], 2)
        if old is not None:
            row[f"{kernel}_old_s"] = t[f"{kernel}_old"]
            row[f"{kernel}_new_over_old"] = round(t[kernel] / t[f"{kernel}_old"], 3)
    return row


def tables(repeats: int) -> list[dict[str, Any]]:
    old = baseline_core()
    cases = [(np.int8, np.int8), (np.int8, np.int64), (np.int16, np.int16), (np.int16, np.int64)]
    return [table_case(d, t, repeats, old) for d, t in cases]


def strategies(fn: Callable[[], Any], i16: bool) -> Callable[[], Any]:
    """``fn`` with VNNI off and the i16 strategy allowed (``i16``) or not (f32 sgemm), in the
    Gemm and in the Conv (where it is off by default)."""

    def run() -> Any:
        vnni, on, conv = _core.int_vnni(), _core.int_i16(), _core.int_i16_conv()
        _core.int_vnni(False)
        _core.int_i16(i16)
        _core.int_i16_conv(i16)
        try:
            return fn()
        finally:
            _core.int_vnni(vnni)
            _core.int_i16(on)
            _core.int_i16_conv(conv)

    return run


def i16_race(fn: Callable[[], Any], plan: Callable[[], str] | None, repeats: int) -> dict[str, Any]:
    new, old = strategies(fn, True), strategies(fn, False)
    assert np.array_equal(new(), old())  # int8 results: the same integers
    t = race({"i16": new, "f32": old}, repeats)
    names = {} if plan is None else {"strategy": strategies(plan, True)()}
    if plan is not None:
        names["baseline_strategy"] = strategies(plan, False)()
    return {
        **names,
        "i16_s": t["i16"],
        "f32_sgemm_s": t["f32"],
        "speedup_vs_f32_sgemm": t["f32"] / t["i16"],
    }


def i16_cases(repeats: int) -> dict[str, Any]:
    """The fused calibration kernels with the i16 strategy vs the f32 one."""
    rng = np.random.default_rng(4)
    out: dict[str, Any] = {"available": _core.int_i16()}
    for bits in (6, 8):
        for m, k, n in [(100_000, 64, 128), (100_000, 128, 128), (100_000, 128, 10)]:
            half = 2 ** (bits - 1)
            a = rng.integers(0, 2 * half - 1, (1, m, k), endpoint=True)
            w = rng.integers(-half + 1, half - 1, (1, k, n), endpoint=True)
            sub, mul = rng.normal(size=n), rng.uniform(1e-3, 1e-2, size=n)

            def fused(a: np.ndarray = a, w: np.ndarray = w, sub: Any = sub, mul: Any = mul) -> Any:
                args = (a, w, 0, 0, 0.5, sub, mul, None, 0.05, 3.0, 0.0, 63.0, "int8")
                return _core.int_matmul_rescale_quant(*args)[0]

            def plan(a: np.ndarray = a, w: np.ndarray = w) -> str:
                return str(_core.int_matmul_plan(a, w, 0)[0])

            out[f"matmul_{m}x{k}x{n}_{bits}bit"] = i16_race(fused, plan, repeats)
    layers = [
        ("conv1", (10_000, 1, 8, 8), (8, 1, 3, 3), 1),
        ("conv2", (10_000, 8, 8, 8), (16, 8, 3, 3), 2),
    ]
    for name, xs, ws, stride in layers:
        x = rng.integers(0, 31, xs, endpoint=True)
        w = rng.integers(-15, 15, ws, endpoint=True)
        o = ws[0]
        vec = (rng.normal(size=o), rng.uniform(1e-3, 1e-2, size=o))

        def conv(x: np.ndarray = x, w: np.ndarray = w, s: int = stride, v: Any = vec) -> Any:
            return _core.int_conv2d_rescale_quant(
                x, w, 0, 1, (s, s), (1, 1, 1, 1), 7, 0, 0.5,
                v[0], v[1], None, 0.05, 3.0, 0.0, 31.0, "int8",
            )[0]  # fmt: skip

        out[name] = i16_race(conv, None, repeats)
    return out


def narrow(fn: Callable[[], Any], on: bool) -> Callable[[], Any]:
    """``fn`` with VNNI off and the u8 x i8 AVX2 strategy allowed (``on``) or not (i16)."""

    def run() -> Any:
        vnni, was = _core.int_vnni(), _core.int_u8i8_avx2()
        _core.int_vnni(False)
        _core.int_u8i8_avx2(on)
        try:
            return fn()
        finally:
            _core.int_vnni(vnni)
            _core.int_u8i8_avx2(was)

    return run


def u8i8_cases(repeats: int) -> dict[str, Any]:
    """The u8 x i8 AVX2 strategy vs the i16 one on 4096-row blocks (GMAC/s = M·K·N / time)."""
    rng = np.random.default_rng(6)
    out: dict[str, Any] = {"available": _core.int_u8i8_avx2()}
    for bits in (6, 5):
        for m, k, n in [(4096, 64, 128), (4096, 128, 128), (4096, 128, 10)]:
            half = 2 ** (bits - 1)
            a = rng.integers(0, 2 * half - 1, (1, m, k), endpoint=True)
            w = rng.integers(-half + 1, half - 1, (1, k, n), endpoint=True)
            sub, mul = rng.normal(size=n), rng.uniform(1e-3, 1e-2, size=n)
            args = (a, w, 0, 0, 0.5, sub, mul, None, 0.05, 3.0, 0.0, 2.0 * half - 1, "int8")
            fns = {
                "matmul": lambda a=a, w=w: _core.int_matmul(a, w, 0),
                "fused": lambda args=args: _core.int_matmul_rescale_quant(*args)[0],
            }
            row: dict[str, Any] = {
                "strategy": narrow(lambda a=a, w=w: _core.int_matmul_plan(a, w, 0)[0], True)(),
                "baseline_strategy": narrow(
                    lambda a=a, w=w: _core.int_matmul_plan(a, w, 0)[0], False
                )(),
            }
            for name, fn in fns.items():
                new, old = narrow(fn, True), narrow(fn, False)
                assert np.array_equal(new(), old())
                t = race({"u8i8": new, "i16": old}, repeats)
                macs = m * k * n
                row[f"{name}_u8i8_avx2_gmacs"] = round(macs / t["u8i8"] / 1e9, 2)
                row[f"{name}_i16_gmacs"] = round(macs / t["i16"] / 1e9, 2)
                row[f"{name}_speedup_vs_i16"] = round(t["i16"] / t["u8i8"], 3)
            out[f"{m}x{k}x{n}_{bits}bit"] = row
    return out


def vector_epilogue(fn: Callable[[], Any], on: bool) -> Callable[[], Any]:
    """``fn`` with the AVX2 epilogue of the fused kernels allowed (``on``) or not."""

    def run() -> Any:
        was = _core.int_vector_epilogue()
        _core.int_vector_epilogue(on)
        try:
            return fn()
        finally:
            _core.int_vector_epilogue(was)

    return run


def epilogue_race(fn: Callable[[], Any], repeats: int, scale: float = 1e3) -> dict[str, Any]:
    """Best of `repeats` with the vector epilogue on and off, alternating (ms by default)."""
    t = race({"vector": vector_epilogue(fn, True), "scalar": vector_epilogue(fn, False)}, repeats)
    return {
        "vector": round(t["vector"] * scale, 3),
        "scalar": round(t["scalar"] * scale, 3),
        "speedup": round(t["scalar"] / t["vector"], 3),
    }


def epilogue_cases(repeats: int) -> dict[str, Any]:
    """The vector epilogue vs the scalar one: the MLP's fused calls, the epilogue alone, and
    whole calibrations (times in ms; `ns_per_output` is wall time per output)."""
    rng = np.random.default_rng(7)
    out: dict[str, Any] = {"available": _core.int_vector_epilogue(), "unit": "ms"}
    m = 16384
    # the MLP's operands at 6 bits: signed inputs of the first layer, ReLU outputs after
    for k, (a_lo, a_hi), spread in [(64, (-32, 31), 75.0), (128, (0, 63), 0.0)]:
        a = rng.integers(a_lo, a_hi, (1, m, k), endpoint=True)
        w = rng.integers(-31, 27, (1, k, 128), endpoint=True)
        sub = np.round(rng.normal(0, spread, 128)) if spread else np.zeros(128)
        mul = np.full(128, 0.17 / k**1.5)
        add = rng.normal(0, 0.1, 128)
        tail = (sub, mul, add, 0.15, 32.0, 0.0, 63.0, "int8")

        def fused(a: np.ndarray = a, w: np.ndarray = w, tail: Any = tail) -> Any:
            return _core.int_matmul_rescale_quant(a, w, 0, 0, 0.0, *tail)

        acc = np.einsum("mk,kn->mn", a[0], w[0]).astype(np.int32)

        def epi(acc: np.ndarray = acc, tail: Any = tail) -> Any:
            return _core.int_acc_rescale_quant(acc, 0, 0.0, *tail)

        for name, fn in (("fused", fused), ("acc_rescale_quant", epi)):
            new, old = vector_epilogue(fn, True)(), vector_epilogue(fn, False)()
            assert np.array_equal(new[0], old[0]) and new[1:] == old[1:]
            row = epilogue_race(fn, repeats)
            row["ns_per_output"] = round(row["vector"] * 1e6 / (m * 128), 3)
            row["baseline_ns_per_output"] = round(row["scalar"] * 1e6 / (m * 128), 3)
            out[f"{name}_{m}x{k}x128"] = row
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fhequant import build_quantized_module
    from ptq import cnn_model, mlp_model

    share = float(os.environ.get("FHEQUANT_EPILOGUE_ROWS", "1"))
    builds = [
        ("mlp_100k_6bit", mlp_model(), (int(100_000 * share), 64), 6),
        ("cnn_10k_5bit", cnn_model(), (int(10_000 * share), 1, 8, 8), 5),
    ]
    for name, model, shape, bits in builds:
        x = np.random.default_rng(3).normal(size=shape).astype(np.float32)

        def build(model: Any = model, x: np.ndarray = x, bits: int = bits) -> Any:
            return build_quantized_module(model, x, n_bits=bits)

        out[f"build_{name}"] = epilogue_race(build, max(5, repeats // 4))
    return out


def main() -> None:
    repeats = int(os.environ.get("FHEQUANT_BENCH_REPEATS", "10"))
    if sys.argv[1:] == ["--only", "tables"]:
        print(json.dumps({"benchmark": "table kernels", "tables": tables(5 * repeats)}, indent=1))
        return
    if sys.argv[1:] == ["--only", "u8i8"]:
        result = {"benchmark": "u8 x i8 AVX2 gemm", "u8i8_avx2_vs_i16": u8i8_cases(5 * repeats)}
        print(json.dumps(result, indent=1))
        return
    if sys.argv[1:] == ["--only", "epilogue"]:
        result = {
            "benchmark": "AVX2 epilogue of the fused kernels",
            "load_average": os.getloadavg(),
            "vector_vs_scalar_epilogue": epilogue_cases(max(20, 2 * repeats)),
        }
        print(json.dumps(result, indent=1))
        return
    result = {
        "benchmark": "integer kernels",
        "threads": os.cpu_count(),
        "gemm_512": [gemm_case(0, repeats), gemm_case(5, repeats)],
        "gemm_512_vnni": [gemm_vnni_case(0, repeats), gemm_vnni_case(5, repeats)],
        "mlp_vnni": [
            vnni_case(4096, 128, 128, 3 * repeats),
            vnni_case(100_000, 128, 128, max(1, repeats // 2)),
            vnni_case(100_000, 64, 128, max(1, repeats // 2)),
        ],
        "conv_cnn": conv_case(max(1, repeats // 2)),
        "tables": tables(5 * repeats),
        "i16_vs_f32_sgemm": i16_cases(max(1, repeats // 2)),
        "u8i8_avx2_vs_i16": u8i8_cases(5 * repeats),
        "vector_vs_scalar_epilogue": epilogue_cases(max(20, 2 * repeats)),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
