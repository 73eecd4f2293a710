"""The fused rescale + output quantizer kernels (issue 16) against their numpy twins."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant.errors import FhequantError
from fhequant.kernels import requant as rk
from fhequant.kernels.reference import requant as spec

SETTINGS = settings(max_examples=80, deadline=None)


def _ints(draw: Any, shape: tuple[int, ...], lo: int, hi: int) -> np.ndarray:
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(lo, hi, size=shape, endpoint=True)


@st.composite
def quantizer(draw: Any) -> tuple[Any, Any, int, int]:
    """(scale, zero_point, lo, hi) as an output quantizer gives them (clip bounds of n bits,
    signed or not, narrow or not)."""
    bits = draw(st.integers(2, 15))
    signed = draw(st.booleans())
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    lo += draw(st.sampled_from([0, 1]))
    scale = draw(st.floats(1e-4, 50.0, allow_nan=False))
    zp = draw(st.one_of(st.integers(-(2**bits), 2**bits), st.floats(-100, 100)))
    return float(scale), zp, lo, hi


@st.composite
def rescale(draw: Any, size: int) -> tuple[Any, ...]:
    offset = draw(st.integers(-1000, 1000))
    sub = np.array(draw(st.lists(st.floats(-500, 500), min_size=size, max_size=size)))
    mul = np.array(draw(st.lists(st.floats(1e-4, 2.0), min_size=size, max_size=size)))
    add = draw(st.one_of(st.none(), st.lists(st.floats(-5, 5), min_size=size, max_size=size)))
    return offset, sub, mul, None if add is None else np.array(add)


def _same(got: Any, want: Any) -> None:
    assert (got is None) == (want is None)
    if got is None:
        return
    assert got[0].dtype == want[0].dtype
    assert got[0].shape == want[0].shape
    np.testing.assert_array_equal(got[0], want[0])
    assert (got[1], got[2]) == (want[1], want[2])


@SETTINGS
@given(st.data(), quantizer())
def test_gemm_rescale_quant_matches_reference(data: Any, quant: tuple[Any, ...]) -> None:
    batch = data.draw(st.sampled_from([(), (2,)]))
    m, k, n = (data.draw(st.integers(1, 80)) for _ in range(3))
    x = _ints(data.draw, (*batch, m, k), -64, 63)
    w = _ints(data.draw, (k, n), -31, 31)
    z_w = data.draw(st.integers(-20, 20))
    lsbs = data.draw(st.sampled_from([0, 0, 2, 5]))
    offset, sub, mul, add = data.draw(rescale(n))
    sub, mul = sub.reshape(1, n), mul.reshape(1, n)
    args = (x, w, z_w, lsbs, offset, sub, mul, add, quant)
    want = spec.integer_gemm_rescale_quant_reference(*args)
    _same(rk.integer_gemm_rescale_quant(*args), want)


@SETTINGS
@given(st.data(), quantizer())
def test_conv_rescale_quant_matches_reference(data: Any, quant: tuple[Any, ...]) -> None:
    group = data.draw(st.sampled_from([1, 2]))
    cg, og = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    n = data.draw(st.integers(1, 5))
    ks = [data.draw(st.integers(1, 3)) for _ in range(2)]
    sizes = [data.draw(st.integers(k, k + 6)) for k in ks]
    strides = [data.draw(st.integers(1, 2)) for _ in ks]
    pads = [data.draw(st.integers(0, 1)) for _ in range(4)]
    x = _ints(data.draw, (n, cg * group, *sizes), -16, 15)
    w = _ints(data.draw, (og * group, cg, *ks), -15, 15)
    z_x, z_w = data.draw(st.integers(-16, 15)), data.draw(st.integers(-5, 5))
    lsbs = data.draw(st.sampled_from([0, 0, 3]))
    offset, sub, mul, add = data.draw(rescale(og * group))
    layout = (1, og * group, 1, 1)
    sub, mul = sub.reshape(layout), mul.reshape(layout)
    add = None if add is None else add.reshape(layout)
    geometry = {"strides": strides, "pads": pads, "group": group}
    args = (x, w, z_x, z_w, lsbs, offset, sub, mul, add, quant)
    want = spec.integer_conv_rescale_quant_reference(*args, **geometry)
    _same(rk.integer_conv_rescale_quant(*args, **geometry), want)


def test_bounds_too_wide_or_no_clip_do_not_apply() -> None:
    x = np.arange(12).reshape(3, 4)
    w = np.ones((4, 2), dtype=np.int64)
    ones = np.ones((1, 2))
    assert (
        rk.integer_gemm_rescale_quant(x, w, 0, 0, 0, ones, ones, None, (1.0, 0, 0, 2**16)) is None
    )
    assert (
        rk.integer_gemm_rescale_quant(x, w, 0, 0, 0, ones, ones, None, (1.0, 0, None, None)) is None
    )
    assert spec.requantize_reference(np.ones(2), (1.0, 0, -(2**15), 5)) is None


def test_nan_results_fall_back() -> None:
    x = np.arange(12).reshape(3, 4)
    w = np.ones((4, 2), dtype=np.int64)
    mul = np.array([[np.nan, 1.0]])
    args = (x, w, 0, 0, 0, np.zeros((1, 2)), mul, None, (1.0, 0, -100, 100))
    assert rk.integer_gemm_rescale_quant(*args) is None
    assert spec.integer_gemm_rescale_quant_reference(*args) is None


def test_native_errors_are_typed() -> None:
    from fhequant import _core

    a = np.zeros((1, 2, 3), dtype=np.int64)
    w = np.zeros((1, 3, 2), dtype=np.int64)
    v = np.ones(2)
    with pytest.raises(FhequantError, match="int8"):
        _core.int_matmul_rescale_quant(a, w, 0, 0, 0.0, v, v, None, 1.0, 0.0, 0.0, 5.0, "int32")
    with pytest.raises(FhequantError, match="clip bounds"):
        _core.int_matmul_rescale_quant(a, w, 0, 0, 0.0, v, v, None, 1.0, 0.0, -200.0, 5.0, "int8")


@SETTINGS
@given(st.data(), quantizer())
def test_acc_rescale_quant_is_the_fused_epilogue(data: Any, quant: tuple[Any, ...]) -> None:
    """``int_acc_rescale_quant`` on the accumulators of ``int_matmul_acc_extremes`` gives
    what ``int_matmul_rescale_quant`` gives for the same product (integers, min, max, nan)."""
    from fhequant import _core

    m, k, n = (data.draw(st.integers(1, 80)) for _ in range(3))
    dtype = data.draw(st.sampled_from(["int8", "int16", "int32"]))
    x = _ints(data.draw, (m, k), -64, 63).astype(dtype)
    w = _ints(data.draw, (k, n), -31, 31)
    z_w = data.draw(st.integers(-20, 20))
    lsbs = data.draw(st.sampled_from([0, 0, 2, 5]))
    offset, sub, mul, add = data.draw(rescale(n))
    if data.draw(st.booleans()):
        mul[data.draw(st.integers(0, n - 1))] = np.nan
    scale, zp, lo, hi = quant
    out = data.draw(st.sampled_from(["int8", "int16"]))
    if out == "int8" and (lo < -128 or hi > 127):
        out = "int16"
    if lo < -(2**15) or hi > 2**15 - 1:
        return
    tail = (float(scale), float(zp), float(lo), float(hi), out)
    acc, *_ = _core.int_matmul_acc_extremes(x, w, z_w, w * 0.01, None, 1.0, 0.0, True)
    assert acc is not None
    got = _core.int_acc_rescale_quant(acc, lsbs, float(offset), sub, mul, add, *tail)
    x64 = x.astype(np.int64)[None]
    want = _core.int_matmul_rescale_quant(
        x64, w[None], z_w, lsbs, float(offset), sub, mul, add, *tail
    )
    assert got[0].shape == (m, n) and got[0].dtype == want[0].dtype
    assert got[3] == want[3]
    if not want[3]:  # with a NaN the integers are to be discarded
        np.testing.assert_array_equal(got[0], want[0][0])
        assert (got[1], got[2]) == (want[1], want[2])


def test_acc_rescale_quant_errors() -> None:
    from fhequant import _core

    acc = np.zeros((3, 2), dtype=np.int32)
    v = np.ones(2)
    with pytest.raises(FhequantError, match="int8"):
        _core.int_acc_rescale_quant(acc, 0, 0.0, v, v, None, 1.0, 0.0, 0.0, 5.0, "int32")
    with pytest.raises(FhequantError, match="columns"):
        _core.int_acc_rescale_quant(acc, 0, 0.0, v[:1], v, None, 1.0, 0.0, 0.0, 5.0, "int8")
