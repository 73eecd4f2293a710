"""The filter-then-verify extremes kernels against the exact ones, bit for bit.

``_core.*_extremes_*`` filter with a float32 approximation and an error bound, then run the
exact sums only where an extreme can be (rust/src/kernels/float/filtered.rs); ``exact=True``
runs the exact sums everywhere, the oracle. The inputs are built to be hard on the bound: ties
and one-ulp gaps between rows in different tasks, huge and tiny magnitudes, mixed signs,
negative zeros, non-finite values, extreme dequantization scales and zero points.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import _core

_STYLES = ["normal", "ints", "ties", "ulp", "mixed", "huge", "tiny", "zeros", "negative"]


def _bits(got: tuple[float, float, bool]) -> tuple[bytes, bytes, bool]:
    lo, hi, finite = got
    return np.float64(lo).tobytes(), np.float64(hi).tobytes(), finite


def _values(shape: tuple[int, ...], style: str, rng: np.random.Generator) -> np.ndarray:
    """float64 values of one adversarial style."""
    size = int(np.prod(shape))
    if style == "ints":  # few distinct values: many equal results
        v = rng.integers(-3, 4, size).astype(np.float64)
    elif style == "ties":  # whole rows repeated: equal maxima in many tasks
        base = rng.standard_normal(shape[-1])
        v = np.tile(base, size // shape[-1] + 1)[:size]
        v[rng.integers(size)] += 1e-13
    elif style == "ulp":  # rows one ulp apart
        base = rng.standard_normal(shape[-1])
        rows = np.tile(base, (size // shape[-1] + 1, 1))
        steps = rng.integers(-2, 3, rows.shape[0])[:, None]
        v = (rows + steps * np.spacing(rows)).reshape(-1)[:size]
    elif style == "mixed":
        v = rng.standard_normal(size) * 10.0 ** rng.integers(-12, 12, size)
    elif style == "huge":
        v = rng.standard_normal(size) * 1e28
    elif style == "tiny":
        v = rng.standard_normal(size) * 1e-40
    elif style == "zeros":
        v = np.where(rng.random(size) < 0.7, -0.0, rng.standard_normal(size))
    elif style == "negative":
        v = -np.abs(rng.standard_normal(size)) - 1.0
    else:
        v = rng.standard_normal(size)
    return v.reshape(shape)


def _poison(a: np.ndarray, what: str, rng: np.random.Generator) -> None:
    if what != "none":
        bad = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "max": np.finfo(a.dtype).max}[what]
        a.reshape(-1)[rng.integers(a.size)] = bad


def _both(fn: Any, *args: Any) -> None:
    assert _bits(fn(*args)) == _bits(fn(*args, exact=True))


@settings(max_examples=120, deadline=None)
@given(
    n=st.sampled_from([1, 7, 64, 65, 300, 1000]),
    k=st.sampled_from([1, 3, 17, 64, 200, 700]),
    m=st.integers(1, 40),
    dtype=st.sampled_from(["f32", "f64", "f32->f64", "i8", "i16", "i32"]),
    style=st.sampled_from(_STYLES),
    wstyle=st.sampled_from(["normal", "ints", "mixed", "zeros", "negative"]),
    bias=st.sampled_from([None, "normal", "huge", "zeros"]),
    poison=st.sampled_from(["none"] * 6 + ["nan", "inf", "-inf", "max"]),
    seed=st.integers(0, 2**31),
)
def test_filtered_matmul_extremes_are_the_exact_ones(
    n: int,
    k: int,
    m: int,
    dtype: str,
    style: str,
    wstyle: str,
    bias: str | None,
    poison: str,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    w = _values((k, m), wstyle, rng)
    b = None if bias is None else _values((m,), bias, rng)
    if dtype == "f32":
        a = _values((n, k), style, rng).astype(np.float32)
        w32 = w.astype(np.float32)
        b32 = None if b is None else b.astype(np.float32)
        _poison(a if seed % 3 else w32, poison, rng)
        _both(_core.matmul_extremes_f32, a, w32, b32)
        return
    if dtype.startswith("i"):
        info = np.iinfo(dtype.replace("i", "int"))
        q = rng.integers(info.min, info.max, (n, k), endpoint=True, dtype=info.dtype)
        if style == "ties":
            q[:] = q[0]
        scale = float(rng.choice([1e-300, 1e-30, 0.0123, 1.0, 1e20, 1e300]))
        zp = float(rng.choice([0.0, -128.0, 127.5, 3.0, float(info.max)]))
        _poison(w, poison, rng)
        _both(_core.matmul_extremes_f64, q, w, b, scale, zp)
        return
    a = _values((n, k), style, rng)
    if dtype == "f32->f64":
        a = a.astype(np.float32)
    _poison(a if seed % 3 else w, poison, rng)
    _both(_core.matmul_extremes_f64, a, w, b)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 30),
    cg=st.integers(1, 4),
    group=st.sampled_from([1, 1, 2, 3]),
    og=st.integers(1, 9),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilations=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pads=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    style=st.sampled_from(_STYLES),
    dequant=st.booleans(),
    bias=st.booleans(),
    poison=st.sampled_from(["none"] * 6 + ["nan", "inf"]),
    seed=st.integers(0, 2**31),
)
def test_filtered_conv_extremes_are_the_exact_ones(
    n: int,
    cg: int,
    group: int,
    og: int,
    hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int, int, int],
    style: str,
    dequant: bool,
    bias: bool,
    poison: str,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    c, o = cg * group, og * group
    span = [(kernel[i] - 1) * dilations[i] + 1 for i in range(2)]
    h, wd = (max(hw[i], span[i]) for i in range(2))
    w = _values((o, cg, *kernel), "normal" if style == "ulp" else style, rng)
    b = _values((o,), "normal", rng) if bias else None
    geometry = (strides, dilations, pads[:2], pads[2:], group, b)
    if dequant:
        x: np.ndarray = rng.integers(-128, 128, (n, c, h, wd), dtype=np.int8)
        scale = float(rng.choice([1e-30, 0.05, 1e25]))
        zp = float(rng.choice([0.0, -128.0, 3.5]))
        _poison(w, poison, rng)
        _both(_core.conv2d_extremes_f64, x, w, *geometry, scale, zp)
        return
    x = _values((n, c, h, wd), style, rng)
    _poison(x, poison, rng)
    _both(_core.conv2d_extremes_f64, x, w, *geometry)
    _both(_core.conv2d_extremes_f64, x.astype(np.float32), w, *geometry)


def test_filtered_kernels_find_the_single_largest_value_in_a_large_block() -> None:
    """One row, among many close ones, holds the max; the filter must keep it."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((20_000, 64))
    w = rng.standard_normal((64, 16))
    a[12_345] = 4.0 * np.sign(w[:, 3])
    a[777] = np.nextafter(a[12_345], 0.0)  # one ulp smaller in every input
    _both(_core.matmul_extremes_f64, a, w, None)
    _both(_core.matmul_extremes_f32, a.astype(np.float32), w.astype(np.float32), None)


def _quantized_weights(
    w: np.ndarray, style: str, bits: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Weight integers for ``w`` and their zero point: a min/max quantization of ``bits``
    bits, one clipped to a third of the range (large residuals), or unrelated integers."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if style == "random" or not np.isfinite(w).all():
        return rng.integers(lo, hi, w.shape, endpoint=True), int(rng.integers(-3, 4))
    span = float(w.max() - w.min()) or 1.0
    step = span / (hi - lo) / (3.0 if style == "clipped" else 1.0)
    z_w = int(np.clip(np.round(-w.min() / step) + lo, lo, hi)) if style != "clipped" else 0
    return np.clip(np.round(w / step) + z_w, lo, hi).astype(np.int64), z_w


@settings(max_examples=150, deadline=None)
@given(
    n=st.sampled_from([1, 7, 64, 65, 300, 1000]),
    k=st.sampled_from([1, 3, 17, 64, 130]),
    m=st.integers(1, 40),
    dtype=st.sampled_from(["int8", "int16", "int32"]),
    wstyle=st.sampled_from(["quant", "quant", "clipped", "random"]),
    zero_point=st.sampled_from([0, 0, 3, -7]),
    scale=st.sampled_from([0.05, 1.7, 1e-30, 1e25]),
    bias=st.sampled_from([None, "normal", "zero-extreme"]),
    poison=st.sampled_from(["none"] * 8 + ["nan", "inf", "bias-nan", "bias-inf"]),
    seed=st.integers(0, 2**31),
)
def test_acc_extremes_are_the_exact_ones(
    n: int,
    k: int,
    m: int,
    dtype: str,
    wstyle: str,
    zero_point: int,
    scale: float,
    bias: str | None,
    poison: str,
    seed: int,
) -> None:
    """``int_matmul_acc_extremes``: the accumulators of ``int_matmul`` and the extremes of
    ``matmul_extremes_f64(exact=True)``, bit for bit, whatever the weight integers."""
    rng = np.random.default_rng(seed)
    bits = {"int8": 6, "int16": 9, "int32": 11}[dtype]
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    a = rng.integers(lo, hi, (n, k), endpoint=True).astype(dtype)
    w = rng.standard_normal((k, m)) / np.sqrt(k)
    b = None if bias is None else rng.standard_normal(m) * 0.1
    if bias == "zero-extreme":  # non-negative terms, some rows exactly zero: min is 0
        a = np.abs(a.astype(np.int64) - zero_point).astype(dtype) + np.asarray(zero_point, dtype)
        a[rng.random(n) < 0.3] = zero_point
        w, b = np.abs(w), None
    if poison in ("nan", "inf"):
        w[rng.integers(k), rng.integers(m)] = np.nan if poison == "nan" else np.inf
    wq, z_w = _quantized_weights(w, wstyle, 6, rng)
    if poison.startswith("bias"):
        b = np.zeros(m) if b is None else b
        b[rng.integers(m)] = np.nan if poison == "bias-nan" else -np.inf
    args = (a, wq, z_w, w, b, scale, float(zero_point))
    acc, *got = _core.int_matmul_acc_extremes(*args, True)
    want = _core.matmul_extremes_f64(a, w, b, scale, float(zero_point), exact=True)
    assert _bits(tuple(got)) == _bits(want)  # type: ignore[arg-type]
    reference = _core.int_matmul(a.astype(np.int64)[None], wq[None], z_w)[0]
    assert acc is not None and acc.dtype == np.int32
    np.testing.assert_array_equal(acc, reference)
    none, *again = _core.int_matmul_acc_extremes(*args, False, exact=True)
    assert none is None and _bits(tuple(again)) == _bits(want)  # type: ignore[arg-type]


def test_acc_extremes_errors() -> None:
    from fhequant.errors import DTypeError, OverflowRiskError, ShapeError

    a = np.full((3, 4), 2**20, dtype=np.int32)
    wq = np.full((4, 2), 2**11, dtype=np.int64)
    w = np.ones((4, 2))
    with pytest.raises(OverflowRiskError, match="int32 accumulator"):
        _core.int_matmul_acc_extremes(a, wq, 0, w, None, 1.0, 0.0, True)
    with pytest.raises(ShapeError, match="layer"):
        _core.int_matmul_acc_extremes(a, wq[:3], 0, w, None, 1.0, 0.0, True, context="layer")
    with pytest.raises(DTypeError, match="int64"):
        _core.int_matmul_acc_extremes(a.astype(np.int64), wq, 0, w, None, 1.0, 0.0, True)
