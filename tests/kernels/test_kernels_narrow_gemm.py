"""The integer Gemm kernels read int8/int16/int32 inputs as stored (no int64 copy): every
call on a narrow input gives the bits of the same call on the int64 input, under each
combination of the SIMD strategy switches (so each strategy's packing of A is covered)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import _core
from fhequant import kernels as ik
from fhequant.kernels import requant as rk

SETTINGS = settings(max_examples=40, deadline=None)
SWITCHES = (_core.int_vnni, _core.int_u8i8_avx2, _core.int_i16)
NARROW = (np.int8, np.int16, np.int32)


@contextmanager
def allowed(flags: tuple[bool, ...]) -> Iterator[None]:
    """The SIMD strategies allowed (where the CPU has them) per flag of ``SWITCHES``; the
    switches are restored afterwards."""
    before = [switch() for switch in SWITCHES]
    try:
        for switch, on in zip(SWITCHES, flags, strict=True):
            switch(on)
        yield
    finally:
        for switch, on in zip(SWITCHES, before, strict=True):
            assert switch(on) == on


def _every_call(a: np.ndarray, w: np.ndarray, z_w: int, lsbs: int) -> list[Any]:
    """The plan, product, rescale (float bits) and fused quantization of ``a @ (w - z_w)``."""
    n = w.shape[-1]
    sub = np.linspace(-3.0, 5.0, n)
    mul = np.linspace(0.01, 0.3, n)
    ints, lo, hi, nan = _core.int_matmul_rescale_quant(
        a, w, z_w, lsbs, 1.5, sub, mul, None, 0.7, -2.0, -31.0, 31.0, "int8"
    )
    rescaled = _core.int_matmul_rescale(a, w, z_w, lsbs, 1.5, sub, mul, None)
    return [
        _core.int_matmul_plan(a, w, z_w),
        _core.int_matmul(a, w, z_w),
        rescaled.view(np.uint64),
        ints,
        (lo, hi, nan),
    ]


def _same(got: list[Any], want: list[Any]) -> None:
    for g, w in zip(got, want, strict=True):
        if isinstance(w, np.ndarray):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)
        else:
            assert g == w


@st.composite
def operands(draw: Any) -> tuple[Any, ...]:
    """A narrow dtype, A of that dtype (a range of any span it holds, so that every strategy
    plans for some), W, z_w and lsbs."""
    dtype = draw(st.sampled_from(NARROW))
    info = np.iinfo(dtype)
    span = draw(st.sampled_from([0, 1, 15, 63, 255, 4095, 65535]))
    span = min(span, int(info.max) - int(info.min))
    lo = draw(st.integers(int(info.min), int(info.max) - span))
    batch = draw(st.integers(1, 2))
    m, k, n = draw(st.integers(1, 70)), draw(st.integers(0, 90)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.integers(lo, lo + span, size=(batch, m, k), endpoint=True).astype(dtype)
    w_span = draw(st.sampled_from([15, 63, 255, 1023]))
    w = rng.integers(-(w_span // 2), w_span - w_span // 2, size=(1, k, n), endpoint=True)
    return a, w, draw(st.integers(-9, 9)), draw(st.sampled_from([0, 3]))


@SETTINGS
@given(operands())
def test_narrow_inputs_give_the_int64_results_under_every_switch(ops: tuple[Any, ...]) -> None:
    a, w, z_w, lsbs = ops
    wide = a.astype(np.int64)
    for flags in itertools.product([True, False], repeat=len(SWITCHES)):
        with allowed(flags):
            _same(_every_call(a, w, z_w, lsbs), _every_call(wide, w, z_w, lsbs))


@pytest.mark.parametrize("dtype", NARROW)
def test_the_mlp_block_shapes_plan_the_narrow_strategies(dtype: Any) -> None:
    # The calibration's Gemm inputs (6-bit integers, K = 64 and 128): the same plan and
    # bits as int64 with each strategy forced in turn.
    rng = np.random.default_rng(7)
    w = rng.integers(-31, 31, size=(1, 128, 128), endpoint=True)
    a = rng.integers(0, 63, size=(1, 300, 128), endpoint=True).astype(dtype)
    plans = set()
    for flags in [(True, True, True), (False, True, True), (False, False, True)]:
        with allowed(flags):
            got = _every_call(a, w, 3, 0)
            _same(got, _every_call(a.astype(np.int64), w, 3, 0))
            plans.add(got[0][0])
    assert len(plans) >= 2, plans  # at least two strategies ran


def test_views_and_the_python_wrappers_pass_narrow_inputs() -> None:
    rng = np.random.default_rng(3)
    w = rng.integers(-31, 31, size=(20, 48), endpoint=True)
    a = rng.integers(-32, 31, size=(20, 33), endpoint=True).astype(np.int8).T  # a view
    wide = np.asarray(a, dtype=np.int64)
    n = w.shape[1]
    sub, mul = np.full((1, n), 2.0), np.full((1, n), 0.05)
    quant = (0.3, 1.0, -31, 31)
    got = rk.integer_gemm_rescale_quant(a, w, 2, 0, -4.0, sub, mul, None, quant)
    want = rk.integer_gemm_rescale_quant(wide, w, 2, 0, -4.0, sub, mul, None, quant)
    assert got is not None and want is not None
    np.testing.assert_array_equal(got[0], want[0])
    assert got[0].dtype == want[0].dtype and got[1:] == want[1:]
    for g, v in zip(ik.integer_gemm(a, w, 5, 2), ik.integer_gemm(wide, w, 5, 2), strict=True):
        np.testing.assert_array_equal(g, v)
    np.testing.assert_array_equal(
        ik.integer_gemm_rescale(a, w, 2, 2, -4.0, sub, mul).view(np.uint64),
        ik.integer_gemm_rescale(wide, w, 2, 2, -4.0, sub, mul).view(np.uint64),
    )


def test_other_input_dtypes_are_a_type_error() -> None:
    w = np.ones((1, 4, 3), dtype=np.int64)
    for a in (np.ones((1, 2, 4), dtype=np.float64), np.ones((1, 2, 4), dtype=np.uint8)):
        with pytest.raises(TypeError, match="int8, int16, int32 or int64"):
            _core.int_matmul(a, w, 0)
    with pytest.raises(TypeError, match="3-D"):
        _core.int_matmul(np.ones((2, 4), dtype=np.int8), w, 0)
