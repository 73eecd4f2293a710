"""The unshifted U8I8 plan (``_core.int_u8i8_plain``): operands that already are u8 x i8 keep
no centring shift, so the fused kernels take the int32 products as the accumulators. Every
call gives the same bits with it as with the shifted plan, whose row and column terms the
products then need."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import _core

VNNI = _core.int_vnni()


@contextmanager
def plain(on: bool) -> Iterator[None]:
    before = _core.int_u8i8_plain()
    _core.int_u8i8_plain(on)
    try:
        yield
    finally:
        _core.int_u8i8_plain(before)


def _calls(a: np.ndarray, w: np.ndarray, z_w: int, lsbs: int) -> list[Any]:
    """The plan, the fused quantization of the rescaled product, and the filtered extremes
    with their int32 accumulators."""
    n = w.shape[-1]
    sub = np.linspace(-3.0, 5.0, n)
    mul = np.linspace(0.01, 0.3, n)
    fused = _core.int_matmul_rescale_quant(
        a, w, z_w, lsbs, 1.5, sub, mul, None, 0.7, -2.0, -31.0, 31.0, "int8"
    )
    wf = (w[0] - z_w) * 0.037
    bias = np.linspace(-1.0, 1.0, n)
    extremes = _core.int_matmul_acc_extremes(a[0], w[0], z_w, wf, bias, 0.05, 0.0, True)
    return [_core.int_matmul_plan(a, w, z_w), *fused, *extremes]


@settings(max_examples=40, deadline=None)
@given(
    a_lo=st.integers(0, 60),
    a_span=st.sampled_from([0, 1, 31, 63, 127]),
    w_lo=st.integers(-128, 0),
    w_span=st.sampled_from([1, 31, 62, 127]),
    z_w=st.integers(-3, 3),
    lsbs=st.sampled_from([0, 2]),
    dims=st.tuples(st.integers(1, 300), st.integers(1, 80), st.integers(1, 40)),
    seed=st.integers(0, 2**32 - 1),
)
def test_unshifted_plan_gives_the_shifted_bits(
    a_lo: int,
    a_span: int,
    w_lo: int,
    w_span: int,
    z_w: int,
    lsbs: int,
    dims: tuple[int, int, int],
    seed: int,
) -> None:
    m, k, n = dims
    rng = np.random.default_rng(seed)
    a = rng.integers(a_lo, a_lo + a_span, size=(1, m, k), endpoint=True).astype(np.int16)
    w = rng.integers(w_lo, w_lo + w_span, size=(1, k, n), endpoint=True).astype(np.int64)
    with plain(True):
        got = _calls(a, w, z_w, lsbs)
    with plain(False):
        want = _calls(a, w, z_w, lsbs)
    for g, x in zip(got[1:], want[1:], strict=True):
        if isinstance(x, np.ndarray):
            assert g.dtype == x.dtype
            np.testing.assert_array_equal(g, x)
        else:
            assert g == x or (g != g and x != x)  # NaN extremes compare equal
    # the plan is the same strategy; unshifted when the operands allow it
    assert got[0][0] == want[0][0]
    c = (int(w.min()) - z_w, int(w.max()) - z_w)
    unshifted = got[0][0] == "u8i8" and c[0] >= -128 and c[1] <= 127
    if unshifted:
        assert got[0][1:] == (0, 0)


@pytest.mark.skipif(not VNNI, reason="the U8I8 strategy needs AVX-512 VNNI")
def test_the_switch_moves_the_plan_of_six_bit_operands() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(3, 64, size=(1, 50, 64)).astype(np.int8)
    w = rng.integers(-31, 30, size=(1, 64, 16)).astype(np.int64)
    with plain(True):
        assert _core.int_matmul_plan(a, w, 0) == ("u8i8", 0, 0)
    with plain(False):
        strategy, s, t = _core.int_matmul_plan(a, w, 0)
        assert (strategy, s) == ("u8i8", int(a.min())) and t != 0
