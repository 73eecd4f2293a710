"""Integer kernels: the native versions equal their numpy references exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import integer_kernels as ik
from fhequant.errors import DTypeError, OverflowRiskError, QuantizedOpError, ShapeError

SETTINGS = settings(max_examples=60, deadline=None)


def _ints(draw: Any, shape: tuple[int, ...], bits: int, signed: bool) -> np.ndarray:
    seed = draw(st.integers(0, 2**32 - 1))
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return np.random.default_rng(seed).integers(lo, hi, size=shape, endpoint=True)


def _layout(draw: Any, arr: np.ndarray) -> np.ndarray:
    """The same values in C order, Fortran order, or as a transposed/strided view."""
    kind = draw(st.sampled_from(["c", "f", "view"]))
    if kind == "f":
        return np.asfortranarray(arr)
    if kind == "view" and arr.ndim >= 2:
        big = np.zeros((*arr.shape[:-2], arr.shape[-1], 2 * arr.shape[-2]), dtype=arr.dtype)
        big[..., ::2] = np.swapaxes(arr, -1, -2)
        return np.swapaxes(big[..., ::2], -1, -2)
    return arr


def _equal(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.int64
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)


# --- Gemm ----------------------------------------------------------------------------------


@st.composite
def gemm_case(draw: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    batch = draw(st.sampled_from([(), (2,), (1, 3), (2, 1)]))
    w_batch = draw(st.sampled_from([(), batch, batch[-1:]])) if batch else ()
    m, k, n = (draw(st.integers(1, 9)) for _ in range(3))
    bits = draw(st.sampled_from([2, 8, 16, 28]))
    x = _ints(draw, (*batch, m, k), bits, draw(st.booleans()))
    w = _ints(draw, (*w_batch, k, n), draw(st.sampled_from([2, 8])), True)
    z_x = draw(st.integers(-(2**7), 2**8))
    z_w = draw(st.sampled_from([0, draw(st.integers(-100, 100))]))
    return _layout(draw, x), _layout(draw, w), z_x, z_w


@SETTINGS
@given(gemm_case())
def test_gemm_matches_reference(case: tuple[np.ndarray, np.ndarray, int, int]) -> None:
    x, w, z_x, z_w = case
    _equal(ik.integer_gemm(x, w, z_x, z_w), ik.integer_gemm_reference(x, w, z_x, z_w))


def test_gemm_vector_input_and_dtypes() -> None:
    x = np.arange(5, dtype=np.uint8)
    w = np.arange(15, dtype=np.int16).reshape(5, 3) - 7
    got, want = ik.integer_gemm(x, w, 2, 3), ik.integer_gemm_reference(x, w, 2, 3)
    _equal(got, want)
    assert got[0].shape == (3,) and got[1].shape == (1, 3)
    with pytest.raises(DTypeError, match="Gemm"):
        ik.integer_gemm(x.astype(np.float32), w)
    with pytest.raises(QuantizedOpError, match="z_w"):
        ik.integer_gemm(x, w, 0, 0.5)
    with pytest.raises(ShapeError, match="inner axis"):
        ik.integer_gemm(x, w.T)


@SETTINGS
@given(gemm_case())
def test_gemm_equals_the_float_formula(case: tuple[np.ndarray, np.ndarray, int, int]) -> None:
    """m·(acc + p·z_x·z_w - sum_w) = s_x·s_w·Σ(q_x - z_x)(q_w - z_w) (SPEC §3.1)."""
    x, w, z_x, z_w = case
    acc, sum_w = ik.integer_gemm(x, w, z_x, z_w)
    p = w.shape[-2]
    exact = (x.astype(object) - z_x) @ (w.astype(object) - z_w)
    np.testing.assert_array_equal(acc.astype(object) + p * z_x * z_w - sum_w, exact)
    s_x, s_w = 0.0173, 0.00291
    want = s_x * s_w * ((x.astype(np.float64) - z_x) @ (w.astype(np.float64) - z_w))
    got = (s_x * s_w) * (acc.astype(np.float64) + p * z_x * z_w - sum_w)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * max(1.0, np.abs(want).max()))


def test_gemm_overflow_names_operands_and_bits() -> None:
    x = np.full((2, 64), 2**40, dtype=np.int64)
    w = np.full((64, 3), -(2**20), dtype=np.int64)
    for fn in (ik.integer_gemm, ik.integer_gemm_reference):
        with pytest.raises(OverflowRiskError, match=r"fc1.*uint41.*int21"):
            fn(x, w, 0, 0, name="fc1")
    # The largest accumulator that fits is computed exactly (i64 strategy).
    x = np.full((1, 4), 2**30, dtype=np.int64)
    w = np.full((4, 1), 2**30 - 1, dtype=np.int64)
    assert ik.integer_gemm(x, w)[0][0, 0] == 4 * 2**30 * (2**30 - 1)
