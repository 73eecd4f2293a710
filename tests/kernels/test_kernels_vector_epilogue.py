"""The vector epilogues of the fused rescale + quantize kernels (issue 16) against the scalar
one: with ``_core.int_vector_epilogue`` (AVX2), ``_core.int_wide_epilogue`` (AVX-512, its
division made of fused multiply-adds) and ``_core.int_screen_epilogue`` (the Gemm's float32
screen, float64 where it cannot vouch for float32) on and off, ``int_matmul_rescale_quant``,
``int_acc_rescale_quant`` and ``int_conv2d_rescale_quant`` give the same integers, min, max
and NaN flag (and the same errors), on exact .5 ties, NaN operands, values beyond the clip
bounds, accumulators past 2^51 (the vector code's fallback), rounded accumulators, and
scales, zero points and values outside what the fused division covers (its fallback).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import _core
from fhequant.errors import FhequantError

SETTINGS = settings(max_examples=60, deadline=None)


# the switches of the epilogues, each state a value per switch: the float32 screen, the
# wide one, the AVX2 one, the scalar one (last, the reference)
SWITCHES = (_core.int_vector_epilogue, _core.int_wide_epilogue, _core.int_screen_epilogue)
STATES = ((True, True, True), (True, True, False), (True, False, False), (False, False, False))


def _each(call: Callable[[], Any]) -> list[Any]:
    """``call()`` under each of ``STATES`` (a result or the error raised)."""
    before = [switch() for switch in SWITCHES]
    results = []
    try:
        for state in STATES:
            for switch, on in zip(SWITCHES, state, strict=True):
                switch(on)
            try:
                results.append(call())
            except FhequantError as e:
                results.append(e)
    finally:
        for switch, on in zip(SWITCHES, before, strict=True):
            switch(on)
    return results


def _same(call: Callable[[], Any]) -> Any:
    *vectors, scalar = _each(call)
    for vec in vectors:
        if isinstance(scalar, Exception):
            assert type(vec) is type(scalar) and str(vec) == str(scalar)
            continue
        assert not isinstance(vec, Exception), vec
        assert vec[0].dtype == scalar[0].dtype and vec[0].shape == scalar[0].shape
        np.testing.assert_array_equal(vec[0], scalar[0])
        assert vec[1:] == scalar[1:]
    return scalar


@st.composite
def epilogue(draw: Any, size: int) -> tuple[Any, ...]:
    """(lsbs, offset, sub, mul, add, scale, zero_point, lo, hi, dtype) for `size` columns:
    plain or exact-tie operands, sometimes a NaN or inf operand, sometimes values, a scale
    or a zero point the AVX-512 division does not cover (|x| >= 2^500, |scale| outside
    [2^-400, 2^400], a fractional zero point)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lsbs = draw(st.sampled_from([0, 0, 0, 1, 3, 12]))
    if draw(st.booleans()):  # every value k + 0.5 (or an integer): ties both signs
        offset, sub, mul = 0.0, np.zeros(size), np.full(size, 0.5)
    else:
        offset = float(draw(st.integers(-1000, 1000)))
        sub = rng.uniform(-500, 500, size)
        mul = rng.uniform(-0.05, 0.05, size) * draw(st.sampled_from([1.0, 1e-3, 1e-9, 1e160]))
    add = None if draw(st.booleans()) else rng.uniform(-5, 5, size)
    special = draw(st.sampled_from([None, None, None, np.nan, np.inf, -0.0]))
    if special is not None:
        mul[draw(st.integers(0, size - 1))] = special
    dtype = draw(st.sampled_from(["int8", "int16"]))
    top = 127 if dtype == "int8" else 32767
    hi = float(draw(st.integers(0, top)))
    lo = float(draw(st.integers(-top - 1, int(hi))))
    scale = draw(st.floats(1e-3, 20.0)) * draw(st.sampled_from([1.0, 1.0, 1e-125, 1e125]))
    zero_point = float(draw(st.integers(-10, 10))) + draw(st.sampled_from([0.0, 0.0, 0.0, 0.5]))
    return lsbs, offset, sub, mul, add, scale, zero_point, lo, hi, dtype


@SETTINGS
@given(st.data())
def test_gemm_and_acc_epilogues_match_the_scalar_one(data: Any) -> None:
    m = data.draw(st.integers(1, 40))
    k = data.draw(st.integers(1, 20))
    n = data.draw(st.integers(1, 37))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    # up to 2^48 per product times k <= 20: past 2^51 (the scalar fallback) for large spans
    span = data.draw(st.sampled_from([40, 2**10, 2**24, 2**44]))
    a = rng.integers(-span, span, size=(1, m, k), endpoint=True)
    w = rng.integers(-16, 16, size=(1, k, n), endpoint=True)
    z_w = data.draw(st.integers(-3, 3))
    args = data.draw(epilogue(n))
    _same(lambda: _core.int_matmul_rescale_quant(a, w, z_w, *args))
    if span <= 2**10:  # the accumulators fit int32
        acc = np.einsum("mk,kn->mn", a[0], w[0] - z_w).astype(np.int32)
        _same(lambda: _core.int_acc_rescale_quant(acc, *args))


@SETTINGS
@given(st.data())
def test_conv_epilogue_matches_the_scalar_one(data: Any) -> None:
    """Small images (direct evaluation) and many outputs from a narrow accumulator range
    (the per-channel tables, built with the same epilogue)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n = data.draw(st.sampled_from([1, 2, 40]))
    c = data.draw(st.integers(1, 3))
    o = data.draw(st.integers(1, 9))
    size = data.draw(st.integers(3, 13))
    bits = data.draw(st.sampled_from([2, 4, 8, 20]))
    x = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(n, c, size, size))
    w = rng.integers(-7, 7, size=(o, c, 3, 3), endpoint=True)
    strides = (data.draw(st.integers(1, 2)), 1)
    pads = (1, 0, data.draw(st.integers(0, 2)), 1)
    pad_value = data.draw(st.integers(-2, 2))
    args = data.draw(epilogue(o))
    _same(lambda: _core.int_conv2d_rescale_quant(x, w, 1, 1, strides, pads, pad_value, *args))


def test_fallback_overflow_and_nan_edges() -> None:
    """Accumulators at +-2^51 and beyond, a rounding that leaves int64, a NaN scale."""
    e = 2**51
    a = np.array([[[e - 1], [e], [-e], [-e - 1], [2**60], [3], [-5], [7], [9]]], dtype=np.int64)
    w = np.ones((1, 1, 11), dtype=np.int64)
    v = np.full(11, 1.0 / e)
    tail = (0.01, 0.0, -30000.0, 30000.0, "int16")
    got = _same(lambda: _core.int_matmul_rescale_quant(a, w, 0, 0, 0.0, v * 0, v, None, *tail))
    assert got[1] < 0 < got[2]
    # accumulators across +-2^51 (in range, at the edge, beyond), each column's `sub` its
    # own float64 value less a small integer: every integer shows a wrong conversion
    w16 = np.arange(-8, 8, dtype=np.int64).reshape(1, 1, 16)
    for row in (2**48 + 1, 2**49 + 3, -(2**50 + 7), 2**51 // 7):
        acc64 = row * w16[0, 0]
        small = np.arange(16) % 5 - 2.0
        sub = acc64.astype(np.float64) - small
        a1 = np.array([[[row]]], dtype=np.int64)
        ones = np.ones(16)
        got = _same(
            lambda a1=a1, sub=sub, ones=ones: _core.int_matmul_rescale_quant(
                a1, w16, 0, 0, 0.0, sub, ones, None, 1.0, 0.0, -100.0, 100.0, "int8"
            )
        )
        want = np.clip(np.rint((acc64.astype(np.float64) - sub) * ones / 1.0 + 0.0), -100, 100)
        np.testing.assert_array_equal(got[0][0, 0], want)
    big = np.full((1, 9, 1), 2**63 - 2, dtype=np.int64)
    err = _same(lambda: _core.int_matmul_rescale_quant(big, w, 0, 4, 0.0, v, v, None, *tail))
    assert isinstance(err, FhequantError)
    acc = np.arange(-40, 48, dtype=np.int32).reshape(8, 11)
    nan = _same(
        lambda: _core.int_acc_rescale_quant(acc, 0, 0.0, v, v, None, np.nan, 0.0, -1.0, 1.0, "int8")
    )
    assert nan[3] and (nan[1], nan[2]) == (0, 0)


@pytest.mark.parametrize("switch", [*SWITCHES, _core.int_lookup_permute])
def test_switches_report_and_restore(switch: Callable[..., bool]) -> None:
    before = switch()
    try:
        assert switch(False) is False
        assert switch() is False
        on = switch(True)
        assert on == switch()
    finally:
        switch(before)
    with pytest.raises(TypeError):
        switch("yes")


def test_wide_division_edges_match_the_scalar_one() -> None:
    """Quotients next to .5 ties for scales from 2^-400 to 2^400 (and just outside), the
    values around 2^500 where the wide path hands a group to the AVX2 one, and tiny values."""
    rng = np.random.default_rng(5)
    acc = rng.integers(-(2**20), 2**20, size=(64, 16), dtype=np.int32)
    for e in (-401, -400, -399, -3, 0, 7, 399, 400, 401):
        scale = float(rng.uniform(1, 2)) * 2.0**e
        # values that are (k + 1/2) * scale up to a few ulps: the division decides the tie
        ulps = rng.integers(-3, 4, size=16).astype(np.float64)
        mul = np.full(16, scale / 2.0) * (1 + ulps * 2.0**-52)
        args = (0, 0.0, np.zeros(16), mul, None, scale, 0.0, -(2.0**15), 2.0**15 - 1, "int16")
        _same(lambda args=args: _core.int_acc_rescale_quant(acc, *args))
    for big in (2.0**499, 2.0**500, 2.0**501, 2.0**-600, 0.0):
        mul = np.full(16, big)
        mul[3] = 1.0
        args = (0, 0.0, np.zeros(16), mul, None, 2.0**-3, 2.0, -128.0, 127.0, "int8")
        got = _same(lambda args=args: _core.int_acc_rescale_quant(acc, *args))
        assert not got[3]
