"""Integer kernels: the native versions equal their numpy references exactly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import _core
from fhequant import kernels as ik
from fhequant.errors import (
    DTypeError,
    OverflowRiskError,
    QuantizationError,
    QuantizedOpError,
    ShapeError,
)
from fhequant.kernels import conv as conv_dispatch
from fhequant.kernels import gemm as gemm_dispatch
from fhequant.kernels import reference as spec

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
    _equal(ik.integer_gemm(x, w, z_x, z_w), spec.integer_gemm_reference(x, w, z_x, z_w))


def test_gemm_vector_input_and_dtypes() -> None:
    x = np.arange(5, dtype=np.uint8)
    w = np.arange(15, dtype=np.int16).reshape(5, 3) - 7
    got, want = ik.integer_gemm(x, w, 2, 3), spec.integer_gemm_reference(x, w, 2, 3)
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
    """m·(acc + p·z_x·z_w - sum_w) = s_x·s_w·Σ(q_x - z_x)(q_w - z_w) (docs/contract.md §3.1)."""
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
    for fn in (ik.integer_gemm, spec.integer_gemm_reference):
        with pytest.raises(OverflowRiskError, match=r"fc1.*uint41.*int21"):
            fn(x, w, 0, 0, name="fc1")
    # The largest accumulator that fits is computed exactly (i64 strategy).
    x = np.full((1, 4), 2**30, dtype=np.int64)
    w = np.full((4, 1), 2**30 - 1, dtype=np.int64)
    assert ik.integer_gemm(x, w)[0][0, 0] == 4 * 2**30 * (2**30 - 1)


# --- Conv and pools ------------------------------------------------------------------------


@st.composite
def conv_case(draw: Any) -> dict[str, Any]:
    one_d = draw(st.booleans())
    group = draw(st.sampled_from([1, 2, 3]))
    cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    ks = [draw(st.integers(1, 3)) for _ in range(1 if one_d else 2)]
    sizes = [draw(st.integers(k, k + 5)) for k in ks]
    strides = [draw(st.integers(1, 3)) for _ in ks]
    pads = [draw(st.integers(0, 2)) for _ in range(2 * len(ks))]
    bits = draw(st.sampled_from([2, 8, 20]))
    x = _ints(draw, (n, cg * group, *sizes), bits, draw(st.booleans()))
    w = _ints(draw, (og * group, cg, *ks), draw(st.sampled_from([2, 8])), True)
    z_x = draw(st.integers(-(2**7), 2**8))
    z_w = draw(st.sampled_from([0, draw(st.integers(-100, 100))]))
    return {
        "q_x": _layout(draw, x),
        "q_w": _layout(draw, w),
        "z_x": z_x,
        "z_w": z_w,
        "strides": strides,
        "pads": pads,
        "group": group,
    }


@SETTINGS
@given(conv_case())
def test_conv_matches_reference(case: dict[str, Any]) -> None:
    _equal(ik.integer_conv(**case), spec.integer_conv_reference(**case))


def _float_conv(x: np.ndarray, w: np.ndarray, strides: list[int], pads: list[int], group: int):
    """A direct float64 conv by explicit loops, independent of the reference's einsum."""
    x4 = x[:, :, None, :] if x.ndim == 3 else x
    w4 = w[:, :, None, :] if w.ndim == 3 else w
    s = (1, strides[0]) if x.ndim == 3 else tuple(strides)
    p = (0, pads[0], 0, pads[1]) if x.ndim == 3 else tuple(pads)
    xp = np.pad(x4, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    o, cg, kh, kw = w4.shape
    oh = (xp.shape[2] - kh) // s[0] + 1
    ow = (xp.shape[3] - kw) // s[1] + 1
    out = np.zeros((x4.shape[0], o, oh, ow))
    for oc in range(o):
        g = oc // (o // group)
        for i in range(oh):
            for j in range(ow):
                win = xp[
                    :, g * cg : (g + 1) * cg, i * s[0] : i * s[0] + kh, j * s[1] : j * s[1] + kw
                ]
                out[:, oc, i, j] = (win * w4[oc]).sum(axis=(1, 2, 3))
    return out[:, :, 0, :] if x.ndim == 3 else out


@SETTINGS
@given(conv_case())
def test_conv_equals_the_float_formula(case: dict[str, Any]) -> None:
    """acc + n_w·z_x·z_w - sum_w = conv(x_pad - z_x, w - z_w) with 0-padding
    (docs/contract.md §3.2)."""
    acc, sum_w = ik.integer_conv(**case)
    x, w, z_x, z_w = case["q_x"], case["q_w"], case["z_x"], case["z_w"]
    n_w = int(np.prod(w.shape[1:]))
    want = _float_conv(
        x.astype(np.float64) - z_x,
        w.astype(np.float64) - z_w,
        case["strides"],
        case["pads"],
        case["group"],
    )
    np.testing.assert_array_equal(acc + n_w * z_x * z_w - sum_w, want)


@st.composite
def pool_case(draw: Any) -> dict[str, Any]:
    one_d = draw(st.booleans())
    ks = [draw(st.integers(1, 3)) for _ in range(1 if one_d else 2)]
    sizes = [draw(st.integers(k, k + 6)) for k in ks]
    strides = [draw(st.integers(1, 3)) for _ in ks]
    pads = [draw(st.integers(0, k - 1)) for k in ks + ks]
    x = _ints(draw, (draw(st.integers(1, 3)), draw(st.integers(1, 4)), *sizes), 8, False)
    return {
        "q_x": _layout(draw, x),
        "kernel_shape": ks,
        "strides": strides,
        "pads": pads,
        "z_x": draw(st.integers(-10, 300)),
    }


@SETTINGS
@given(pool_case(), st.sampled_from([0, 1]))
def test_window_sum_matches_reference(case: dict[str, Any], ceil_mode: int) -> None:
    _equal(
        (ik.window_sum(**case, ceil_mode=ceil_mode),),
        (spec.window_sum_reference(**case, ceil_mode=ceil_mode),),
    )


@SETTINGS
@given(pool_case())
def test_window_max_matches_reference(case: dict[str, Any]) -> None:
    _equal((ik.window_max(**case),), (spec.window_max_reference(**case),))


@SETTINGS
@given(pool_case())
def test_unfold_matches_reference(case: dict[str, Any]) -> None:
    if case["q_x"].ndim == 3:  # Unfold is 2-D: run the 1-D case with H = 1
        (k,), (s,), (pb, pe) = case["kernel_shape"], case["strides"], case["pads"]
        case = {
            "q_x": case["q_x"][:, :, None, :],
            "kernel_shape": [1, k],
            "strides": [1, s],
            "pads": [0, pb, 0, pe],
            "z_x": case["z_x"],
        }
    _equal((ik.unfold(**case),), (spec.unfold_reference(**case),))


def test_unfold_uses_torch_order() -> None:
    x = np.arange(2 * 3 * 4, dtype=np.int64).reshape(1, 2, 3, 4)
    out = ik.unfold(x, (2, 2), (1, 2), (0, 0, 0, 0), 0)
    assert out.shape == (1, 2 * 4, 2 * 2)
    # column 1 = window at (row 0, col 2); rows = (channel, i, j)
    np.testing.assert_array_equal(out[0, :, 1], [2, 3, 6, 7, 14, 15, 18, 19])


def test_ceil_mode_pads_with_zero_and_counts_windows() -> None:
    x = np.arange(25, dtype=np.int64).reshape(1, 1, 5, 5)
    floor = ik.window_sum(x, (2, 2), (2, 2), (0, 0, 0, 0), 7)
    ceil = ik.window_sum(x, (2, 2), (2, 2), (0, 0, 0, 0), 7, ceil_mode=1)
    assert floor.shape == (1, 1, 2, 2) and ceil.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(ceil[..., :2, :2], floor)
    assert ceil[0, 0, 2, 2] == 24  # the corner window: one input cell, three 0 cells
    norm = ik.window_sum(np.ones_like(x), (2, 2), (2, 2), (0, 0, 0, 0), 1, ceil_mode=1)
    np.testing.assert_array_equal(norm[0, 0], [[4, 4, 2], [4, 4, 2], [2, 2, 1]])
    # A window that would start in the end padding is dropped.
    assert ik.ceil_mode_extension((4, 4), (2, 2), (2, 2), (0, 0, 1, 1)) == (0, 0)


def test_conv_errors() -> None:
    x = np.zeros((1, 4, 5, 5), dtype=np.int64)
    w = np.zeros((2, 3, 3, 3), dtype=np.int64)
    with pytest.raises(ShapeError, match=r"conv1.*group"):
        ik.integer_conv(x, w, group=1, name="conv1")
    with pytest.raises(QuantizedOpError, match="strides"):
        ik.integer_conv(x, w[:, :2], group=2, strides=(0, 1))
    with pytest.raises(QuantizedOpError, match="z_x"):
        ik.integer_conv(x, w[:, :2], np.array([1, 2]), group=2)
    big = np.full((1, 1, 3, 3), 2**40, dtype=np.int64)
    for fn in (ik.integer_conv, spec.integer_conv_reference):
        with pytest.raises(OverflowRiskError, match=r"conv2.*uint41.*int26"):
            fn(big, np.full((1, 1, 3, 3), -(2**25), dtype=np.int64), name="conv2")


# --- round_bit_pattern and bit widths ---------------------------------------------------------


@SETTINGS
@given(
    st.lists(st.integers(-(2**40), 2**40), min_size=0, max_size=30),
    st.integers(-2, 20),
)
def test_round_bit_pattern_matches_reference(values: list[int], lsbs: int) -> None:
    x = np.array(values, dtype=np.int64).reshape(-1, 1)[::-1]
    got = ik.round_bit_pattern(x, lsbs)
    _equal((got,), (spec.round_bit_pattern_reference(x, lsbs),))
    if lsbs > 0:
        step = 2**lsbs
        for v, r in zip(x.ravel().tolist(), got.ravel().tolist(), strict=True):
            # a multiple of 2^k, less than half a step below v or half a step above (ties up)
            assert r % step == 0 and -step // 2 <= v - r < step // 2
            assert r == (v + step // 2) // step * step


def test_round_bit_pattern_ties_go_up() -> None:
    x = np.array([-6, -2, 2, 6, -5, 5, 7, -7])
    np.testing.assert_array_equal(ik.round_bit_pattern(x, 2), [-4, 0, 4, 8, -4, 4, 8, -8])
    np.testing.assert_array_equal(ik.round_bit_pattern(x, 0), x)
    with pytest.raises(OverflowRiskError):
        ik.round_bit_pattern(np.array([2**63 - 2]), 3)


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**62), 2**62 - 1), st.integers(0, 2**62 - 1))
def test_bit_width_matches_concrete(a: int, span: int) -> None:
    from concrete.fhe.dtypes import Integer

    lo, hi = a, a + span
    want = Integer.that_can_represent(np.array([lo, hi], dtype=np.int64))
    assert ik.bit_width(lo, hi) == spec.bit_width_reference(lo, hi) == want.bit_width
    assert (lo < 0) == want.is_signed


@pytest.mark.parametrize("v", [0, 1, 2, 127, 128, 255, 256, 2**31, 2**47, 2**53, 2**62])
def test_bit_width_edges_match_concrete(v: int) -> None:
    from concrete.fhe.dtypes import Integer

    for lo, hi in [(0, v), (-v, 0), (-v, v), (-v - 1, v - 1)]:
        want = Integer.that_can_represent(np.array([lo, hi], dtype=np.int64)).bit_width
        assert ik.bit_width(lo, hi) == want, (lo, hi)


# --- worst-case accumulator ranges --------------------------------------------------------------


@st.composite
def box(draw: Any) -> tuple[int, int]:
    lo = draw(st.integers(-300, 300))
    return lo, lo + draw(st.integers(0, 300))


@SETTINGS
@given(gemm_case(), box(), st.integers(-1, 6))
def test_gemm_bounds_hold_and_are_attained(
    case: tuple[np.ndarray, np.ndarray, int, int], rng_box: tuple[int, int], lsbs: int
) -> None:
    _, w, _, z_w = case
    x_lo, x_hi = rng_box
    lo, hi = ik.gemm_bounds(w, z_w, x_lo, x_hi, lsbs)
    _equal((lo, hi), spec.gemm_bounds_reference(w, z_w, x_lo, x_hi, lsbs))
    raw_lo, raw_hi = ik.gemm_bounds(w, z_w, x_lo, x_hi)
    k, n = w.shape[-2:]
    # Random inputs in the box never leave the bounds, before or after rounding.
    x = np.random.default_rng(k * n).integers(x_lo, x_hi, (*w.shape[:-2], 16, k), endpoint=True)
    acc, _ = ik.integer_gemm(x, w, 0, z_w)
    assert (acc >= raw_lo[..., None, :]).all() and (acc <= raw_hi[..., None, :]).all()
    rounded = ik.round_bit_pattern(acc, lsbs)
    assert (rounded >= lo[..., None, :]).all() and (rounded <= hi[..., None, :]).all()
    # The predicted extreme inputs (row j for column j) reach the bounds exactly.
    coef = np.swapaxes(w - z_w, -1, -2)  # (..., N, K)
    x_min = np.where(coef >= 0, x_lo, x_hi)
    x_max = np.where(coef >= 0, x_hi, x_lo)
    acc_min = np.diagonal(ik.integer_gemm(x_min, w, 0, z_w)[0], axis1=-2, axis2=-1)
    acc_max = np.diagonal(ik.integer_gemm(x_max, w, 0, z_w)[0], axis1=-2, axis2=-1)
    np.testing.assert_array_equal(acc_min, raw_lo)
    np.testing.assert_array_equal(acc_max, raw_hi)
    np.testing.assert_array_equal(ik.round_bit_pattern(acc_min, lsbs), lo)
    np.testing.assert_array_equal(ik.round_bit_pattern(acc_max, lsbs), hi)


def _as_2d(case: dict[str, Any]) -> dict[str, Any]:
    """The 2-D form of a conv case (1-D runs as 2-D with H = 1)."""
    if case["q_x"].ndim == 4:
        return case
    s, p = case["strides"], case["pads"]
    return {
        **case,
        "q_x": case["q_x"][:, :, None, :],
        "q_w": case["q_w"][:, :, None, :],
        "strides": [1, s[0]],
        "pads": [0, p[0], 0, p[1]],
    }


@settings(max_examples=25, deadline=None)
@given(conv_case(), box(), st.integers(-1, 4))
def test_conv_bounds_hold_and_are_attained(
    case: dict[str, Any], rng_box: tuple[int, int], lsbs: int
) -> None:
    x_lo, x_hi = rng_box
    spatial = case["q_x"].shape[2:]
    geo = {"strides": case["strides"], "pads": case["pads"]}
    w, z_w, z_x = case["q_w"], case["z_w"], case["z_x"]
    lo, hi = ik.conv_bounds(w, z_w, x_lo, x_hi, spatial, z_x, lsbs=lsbs, **geo)
    ref = spec.conv_bounds_reference(w, z_w, x_lo, x_hi, spatial, z_x, lsbs=lsbs, **geo)
    _equal((lo, hi), ref)
    raw_lo, raw_hi = ik.conv_bounds(w, z_w, x_lo, x_hi, spatial, z_x, **geo)

    c2 = _as_2d(case)
    w4, (sh, sw), (ph, pw) = c2["q_w"], c2["strides"], c2["pads"][:2]
    o, cg, kh, kw = w4.shape
    shape = (1, c2["q_x"].shape[1], *c2["q_x"].shape[2:])

    def conv(x: np.ndarray) -> np.ndarray:
        return ik.integer_conv(
            x, w4, z_x, z_w, strides=c2["strides"], pads=c2["pads"], group=c2["group"]
        )[0][0]

    # Random inputs in the box never leave the bounds.
    rnd = np.random.default_rng(7).integers(x_lo, x_hi, (8, *shape[1:]), endpoint=True)
    acc = ik.integer_conv(
        rnd, w4, z_x, z_w, strides=c2["strides"], pads=c2["pads"], group=c2["group"]
    )[0]
    assert (acc.min(axis=(0, 2, 3)) >= raw_lo).all()
    assert (acc.max(axis=(0, 2, 3)) <= raw_hi).all()
    # Tightness: per channel and output position, set each window cell to the end its
    # coefficient asks for; the best position reaches the bound exactly.
    oh, ow = conv(np.zeros(shape, dtype=np.int64)).shape[1:]
    best_lo, best_hi = [], []
    for oc in range(o):
        g = oc // (o // c2["group"])
        lows, highs = [], []
        for y in range(oh):
            for xx in range(ow):
                x_min = np.full(shape, x_lo, dtype=np.int64)
                x_max = np.full(shape, x_hi, dtype=np.int64)
                for ci in range(cg):
                    for i in range(kh):
                        for j in range(kw):
                            r, s = y * sh + i - ph, xx * sw + j - pw
                            if 0 <= r < shape[2] and 0 <= s < shape[3]:
                                up = w4[oc, ci, i, j] - z_w >= 0
                                x_min[0, g * cg + ci, r, s] = x_lo if up else x_hi
                                x_max[0, g * cg + ci, r, s] = x_hi if up else x_lo
                lows.append(conv(x_min)[oc, y, xx])
                highs.append(conv(x_max)[oc, y, xx])
        best_lo.append(min(lows))
        best_hi.append(max(highs))
    np.testing.assert_array_equal(best_lo, raw_lo)
    np.testing.assert_array_equal(best_hi, raw_hi)


@SETTINGS
@given(pool_case(), st.sampled_from([0, 1]), box(), st.integers(-1, 3))
def test_window_sum_bounds_hold_and_are_attained(
    case: dict[str, Any], ceil_mode: int, rng_box: tuple[int, int], lsbs: int
) -> None:
    x_lo, x_hi = rng_box
    geo = {k: case[k] for k in ("kernel_shape", "strides", "pads")}
    spatial = case["q_x"].shape[2:]
    args = (geo["kernel_shape"], spatial, case["z_x"], x_lo, x_hi, geo["strides"], geo["pads"])
    lo, hi = ik.window_sum_bounds(*args, ceil_mode=ceil_mode, lsbs=lsbs)
    assert (lo, hi) == spec.window_sum_bounds_reference(*args, ceil_mode=ceil_mode, lsbs=lsbs)
    raw = ik.window_sum_bounds(*args, ceil_mode=ceil_mode)
    shape = (1, 1, *spatial)
    sums = [
        ik.window_sum(np.full(shape, v), z_x=case["z_x"], ceil_mode=ceil_mode, **geo)
        for v in (x_lo, x_hi)
    ]
    assert (int(sums[0].min()), int(sums[1].max())) == raw
    rnd = np.random.default_rng(3).integers(x_lo, x_hi, (4, 1, *spatial), endpoint=True)
    got = ik.window_sum(rnd, z_x=case["z_x"], ceil_mode=ceil_mode, **geo)
    assert raw[0] <= got.min() and got.max() <= raw[1]


def test_ceil_mode_window_sums_match_torch_avg_pool() -> None:
    """sum / norm equals torch's avg_pool2d(ceil_mode=True, count_include_pad=True)."""
    import torch

    rng = np.random.default_rng(0)
    for h, w, k, s, p in [(5, 5, 2, 2, 0), (6, 7, 3, 2, 1), (4, 4, 2, 2, 1), (7, 3, 3, 3, 1)]:
        x = rng.integers(0, 20, (2, 3, h, w))
        want = torch.nn.functional.avg_pool2d(
            torch.tensor(x, dtype=torch.float64), k, s, p, ceil_mode=True, count_include_pad=True
        ).numpy()
        pads = (p, p, p, p)
        sums = ik.window_sum(x, (k, k), (s, s), pads, 0, ceil_mode=1)
        norm = ik.window_sum(np.ones_like(x), (k, k), (s, s), pads, 1, ceil_mode=1)
        assert sums.shape == want.shape
        np.testing.assert_allclose(sums / norm, want, rtol=1e-12)


def test_window_sum_overflow_and_max_never_overflows() -> None:
    x = np.full((1, 1, 3, 3), 2**62 - 1, dtype=np.int64)
    for fn in (ik.window_sum, spec.window_sum_reference):
        with pytest.raises(OverflowRiskError, match=r"pool1.*uint62"):
            fn(x, (2, 2), None, None, 0, name="pool1")
    for fn in (ik.window_max, spec.window_max_reference):
        np.testing.assert_array_equal(
            fn(x, (2, 2), None, None, 0), np.full((1, 1, 2, 2), 2**62 - 1)
        )


@pytest.mark.parametrize(
    ("a_shape", "w_shape"), [((0, 4), (4, 3)), ((2, 0, 4), (4, 3)), ((5, 0), (0, 3))]
)
def test_gemm_of_empty_operands_matches_reference(
    a_shape: tuple[int, ...], w_shape: tuple[int, ...]
) -> None:
    a = np.zeros(a_shape, dtype=np.int64)
    w = np.arange(int(np.prod(w_shape)), dtype=np.int64).reshape(w_shape)
    acc, sums = ik.integer_gemm(a, w, 2, 1)
    want_acc, want_sums = spec.integer_gemm_reference(a, w, 2, 1)
    assert acc.shape == want_acc.shape and sums.shape == want_sums.shape
    np.testing.assert_array_equal(acc, want_acc)
    np.testing.assert_array_equal(sums, want_sums)


def test_gemm_of_a_broadcast_input_matches_reference() -> None:
    # A broadcast view aliases elements; the native path must still give numpy's answer.
    a = np.broadcast_to(np.arange(4, dtype=np.int64), (3, 4))
    w = np.arange(8, dtype=np.int64).reshape(4, 2) - 3
    np.testing.assert_array_equal(
        ik.integer_gemm(a, w, 1, 2)[0], spec.integer_gemm_reference(a, w, 1, 2)[0]
    )


# --- the u8 x i8 (AVX-512 VNNI) strategy at its limits ---------------------------------------


@st.composite
def small_operands_case(draw: Any) -> dict[str, Any]:
    """Operands inside or just outside the u8 x i8 strategy: A spanning 255 or 256 values
    (shifted, possibly negative), W - z_w spanning 255 or 256 values (reaching -128/127 or
    just past), M across the 64-row blocks and the 6-row tiles, K and N across 4 and 16."""
    m = draw(st.sampled_from([1, 5, 6, 7, 64, 65, 131]))
    k, n = draw(st.integers(1, 37)), draw(st.integers(1, 40))
    a_span = draw(st.sampled_from([0, 63, 254, 255, 256]))
    a_lo = draw(st.sampled_from([0, -128, -300, 1000, draw(st.integers(-(2**20), 2**20))]))
    c_span = draw(st.sampled_from([0, 100, 254, 255, 256]))
    c_lo = draw(st.sampled_from([-128, -127, -129, -5, -c_span // 2]))
    z_w = draw(st.sampled_from([0, 3, -40]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.integers(a_lo, a_lo + a_span, size=(m, k), endpoint=True)
    w = rng.integers(c_lo, c_lo + c_span, size=(k, n), endpoint=True) + z_w
    # Make the extremes present, so the ranges are exactly the drawn ones.
    a.flat[rng.integers(a.size)], a.flat[rng.integers(a.size)] = a_lo, a_lo + a_span
    w.flat[0], w.flat[-1] = c_lo + z_w, c_lo + c_span + z_w
    return {"a": a, "w": w, "z_w": z_w, "spans": (int(np.ptp(a)), int(np.ptp(w)))}


@SETTINGS
@given(small_operands_case())
def test_u8i8_limits_match_the_reference(case: dict[str, Any]) -> None:
    a, w, z_w = case["a"], case["w"], case["z_w"]
    _equal(ik.integer_gemm(a, w, 0, z_w), spec.integer_gemm_reference(a, w, 0, z_w))
    sub, mul = np.arange(w.shape[1]) * 0.5, np.linspace(1e-3, 2.0, w.shape[1])
    args = (a, w, z_w, 2, 1.25, sub, mul, None)
    _bits_equal(ik.integer_gemm_rescale(*args), spec.integer_gemm_rescale_reference(*args))
    strategy, s, t = _core.int_matmul_plan(a[None], w[None], z_w)
    a_span, c_span = case["spans"]
    fits = a_span <= 255 and c_span <= 255
    assert (strategy == "u8i8") == (fits and _core.int_vnni())
    if strategy == "u8i8":
        c = w - z_w
        # operands that already are u8 x i8 keep no shift when their worst product fits
        # int32 (the int32 products are then the accumulators); else A on its minimum
        plain = (
            _core.int_u8i8_plain()
            and a.min() >= 0
            and a.max() <= 255
            and c.min() >= -128
            and c.max() <= 127
            and a.shape[1] * int(a.max()) * int(np.abs(c).max()) <= 2**31 - 1
        )
        assert s == (0 if plain else a.min())
        assert -128 <= (c - t).min() <= (c - t).max() <= 127
        if plain:
            assert t == 0


@pytest.fixture
def without_i16() -> Iterator[None]:
    """The AVX2 strategies (i16 and u8 x i8) switched off, so that the float strategies are
    the fallback."""
    on, narrow = _core.int_i16(), _core.int_u8i8_avx2()
    _core.int_i16(False)
    _core.int_u8i8_avx2(False)
    try:
        yield
    finally:
        assert _core.int_i16(on) == on
        assert _core.int_u8i8_avx2(narrow) == narrow


@pytest.mark.usefixtures("without_i16")
def test_u8i8_is_selected_for_small_operands_and_switchable() -> None:
    rng = np.random.default_rng(5)
    a = rng.integers(0, 63, size=(1, 200, 128), endpoint=True)
    w = rng.integers(-127, 127, size=(1, 128, 40), endpoint=True)
    want = spec.integer_gemm_reference(a[0], w[0], 0, 3)[0]
    vnni = _core.int_vnni()  # False only on CPUs without AVX-512 VNNI
    try:
        assert _core.int_matmul_plan(a, w, 3)[0] == ("u8i8" if vnni else "f32")
        np.testing.assert_array_equal(_core.int_matmul(a, w, 3)[0], want)
        assert _core.int_vnni(False) is False
        assert _core.int_matmul_plan(a, w, 3)[0] == "f32"
        np.testing.assert_array_equal(_core.int_matmul(a, w, 3)[0], want)
    finally:
        assert _core.int_vnni(True) == vnni
    # Too wide an input, or too long a sum for i32, falls back to the float strategies.
    assert _core.int_matmul_plan(a * 5, w, 3)[0] == "f32"
    big = np.full((1, 2, 70_000), 255, dtype=np.int64)
    big[0, 0, 0] = 0
    wide = np.full((1, 70_000, 1), -128, dtype=np.int64)
    wide[0, 0, 0] = 127
    assert _core.int_matmul_plan(big, wide, 0)[0] == "f64"
    assert _core.int_matmul_plan(big[:, :, :60_000], wide[:, :60_000], 0)[0] == (
        "u8i8" if vnni else "f64"
    )


def test_int_matmul_of_zero_terms_is_zero() -> None:
    out = _core.int_matmul(np.ones((2, 70, 0), np.int64), np.ones((1, 0, 3), np.int64), 1)
    np.testing.assert_array_equal(out, np.zeros((2, 70, 3), np.int64))


@st.composite
def small_conv_case(draw: Any) -> dict[str, Any]:
    """A conv whose padded input spans 255 or 256 values (the pad value z_x inside or at the
    edge) and whose weights minus z_w reach -128/127 or one past: inside or just outside
    the u8 x i8 strategy; channels and positions across its tiles."""
    group = draw(st.sampled_from([1, 2]))
    cg, og = draw(st.integers(1, 5)), draw(st.integers(1, 9))
    n, k = draw(st.integers(1, 70)), draw(st.integers(1, 3))
    size = draw(st.integers(k, k + 6))
    lo = draw(st.sampled_from([0, -128, -1000, 77]))
    span = draw(st.sampled_from([255, 256]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(lo, lo + span - 1, size=(n, cg * group, size, size), endpoint=True)
    z_x = draw(st.sampled_from([lo + span - 1, lo, lo + 100]))
    c_lo, c_hi = draw(st.sampled_from([(-128, 127), (-129, 100), (-100, 128), (-5, 5)]))
    z_w = draw(st.sampled_from([0, 7]))
    w = rng.integers(c_lo, c_hi, size=(og * group, cg, k, k), endpoint=True) + z_w
    w.flat[0], w.flat[-1] = c_lo + z_w, c_hi + z_w
    pad = draw(st.integers(0, 1))
    stride = draw(st.integers(1, 2))
    return {
        "q_x": x,
        "q_w": w,
        "z_x": z_x,
        "z_w": z_w,
        "strides": [stride, stride],
        "pads": [pad] * 4,
        "group": group,
    }


@SETTINGS
@given(small_conv_case())
def test_u8i8_conv_limits_match_the_reference(case: dict[str, Any]) -> None:
    want = spec.integer_conv_reference(**case)
    _equal(ik.integer_conv(**case), want)
    vnni = _core.int_vnni()
    try:
        assert not _core.int_vnni(False)
        _equal(ik.integer_conv(**case), want)
    finally:
        assert _core.int_vnni(True) == vnni


# --- the fused Gemm rescale (docs/contract.md §3.1, §2.4) -----------------------------------------


def _bits_equal(got: Any, want: Any) -> None:
    """Same dtype, shape and float64 bit patterns."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == np.float64
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))


def _column_operand(draw: Any, values: np.ndarray) -> Any:
    """A per-column operand in one of the forms the op passes (or a form to fall back on)."""
    n = values.shape[-1]
    form = draw(st.sampled_from(["row", "vector", "scalar", "f32", "int", "py", "column"]))
    if form == "row":
        return values.reshape(1, n)
    if form == "vector":
        return values
    if form == "scalar":
        return np.float64(values[0])
    if form == "f32":
        return values.astype(np.float32)
    if form == "int":
        return np.rint(values * 100).astype(np.int64)
    if form == "py":
        return float(values[0])
    return values[:1].reshape(1, 1)  # broadcasts from one element


@st.composite
def rescale_case(draw: Any) -> dict[str, Any]:
    batch = draw(st.sampled_from([(), (), (2,), (1, 3)]))
    m, k, n = draw(st.integers(1, 70)), draw(st.integers(1, 12)), draw(st.integers(1, 9))
    bits = draw(st.sampled_from([2, 6, 8, 16, 30]))
    x = _ints(draw, (*batch, m, k), bits, draw(st.booleans()))
    w = _ints(draw, (k, n), draw(st.sampled_from([2, 6, 8])), True)
    z_x = draw(st.integers(-(2**7), 2**8))
    z_w = draw(st.sampled_from([0, draw(st.integers(-100, 100))]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-6, 1, size=n)
    bias = rng.normal(size=n)
    return {
        "q_x": _layout(draw, x),
        "q_w": _layout(draw, w),
        "z_w": z_w,
        "lsbs": draw(st.sampled_from([0, 0, 1, 3, 7])),
        "offset": draw(st.sampled_from([k * z_x * z_w, np.int64(k * z_x * z_w), 0.5 * z_x])),
        "sub": z_x * np.sum(w, axis=-2, keepdims=True),
        "mul": _column_operand(draw, scale),
        "add": draw(st.sampled_from([None, "bias"])) and _column_operand(draw, bias),
    }


@SETTINGS
@given(rescale_case())
def test_gemm_rescale_matches_reference_bit_for_bit(case: dict[str, Any]) -> None:
    _bits_equal(ik.integer_gemm_rescale(**case), spec.integer_gemm_rescale_reference(**case))


@SETTINGS
@given(rescale_case())
def test_gemm_rescale_reference_is_the_unfused_op_steps(case: dict[str, Any]) -> None:
    """The reference is integer_gemm, round_bit_pattern, then four float64 ufuncs."""
    acc = spec.integer_gemm_reference(case["q_x"], case["q_w"], 0, case["z_w"])[0]
    acc = ik.round_bit_pattern(acc, case["lsbs"])
    v = acc.astype(np.float64)
    v = np.add(v, case["offset"])
    v = np.subtract(v, case["sub"])
    v = np.multiply(case["mul"], v)
    if case["add"] is not None:
        v = np.add(v, case["add"])
    _bits_equal(ik.integer_gemm_rescale(**case), v)


def test_gemm_rescale_runs_natively_for_the_op_operands(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fallback(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the numpy reference ran")

    x = np.arange(60, dtype=np.int64).reshape(2, 10, 3) % 7
    w = np.arange(12, dtype=np.int64).reshape(3, 4) - 6
    want = spec.integer_gemm_rescale_reference(x, w, 2, 1, 6, w.sum(0, keepdims=True), 0.1, None)
    monkeypatch.setattr(gemm_dispatch, "integer_gemm_rescale_reference", no_fallback)
    got = ik.integer_gemm_rescale(x, w, 2, 1, 6, w.sum(0, keepdims=True), 0.1, None)
    _bits_equal(got, want)


def test_gemm_rescale_falls_back_for_other_operands() -> None:
    x = np.arange(12, dtype=np.int64).reshape(3, 4) - 5
    w = np.arange(8, dtype=np.int64).reshape(4, 2) - 3
    args = {"q_x": x, "q_w": w, "z_w": 1, "lsbs": 0, "sub": np.zeros((1, 2)), "mul": 0.5}
    cases = [
        {"offset": np.array([1.0, 2.0]), "add": None},  # a per-column offset
        {"offset": 0, "add": np.ones((3, 1))},  # a per-row bias
        {"offset": 0, "add": np.longdouble(1.0)},  # a wider float
        {"offset": 0, "add": None, "q_x": x[0]},  # a vector input (shape (1, 2) by numpy)
        {"offset": 0, "add": None, "q_w": np.stack([w, w])},  # batched weights
        {"offset": 0, "add": None, "q_x": x[:0]},  # an empty batch
    ]
    for extra in cases:
        case = {**args, **extra}
        got, want = ik.integer_gemm_rescale(**case), spec.integer_gemm_rescale_reference(**case)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_gemm_rescale_errors_are_typed() -> None:
    x = np.full((2, 64), 2**40, dtype=np.int64)
    w = np.full((64, 3), -(2**20), dtype=np.int64)
    ones = np.ones(3)
    for fn in (ik.integer_gemm_rescale, spec.integer_gemm_rescale_reference):
        with pytest.raises(OverflowRiskError, match=r"fc1.*uint41.*int21"):
            fn(x, w, 0, 0, 0, ones, ones, None, name="fc1")
        # rounding an accumulator next to the int64 maximum up leaves int64
        big = np.array([[2**63 - 4]], dtype=np.int64)
        with pytest.raises(OverflowRiskError, match=r"fc2.*leaves int64"):
            fn(big, np.ones((1, 3), dtype=np.int64), 0, 4, 0, ones, ones, None, name="fc2")
        with pytest.raises(QuantizationError, match="63 bits"):
            fn(x[:, :2], w[:2], 0, 63, 0, ones, ones, None, name="fc3")
        with pytest.raises(DTypeError, match="fc4"):
            fn(x.astype(np.float64), w, 0, 0, 0, ones, ones, None, name="fc4")


def _channel_operand(draw: Any, values: np.ndarray, rank: int) -> Any:
    """A per-channel operand of a conv output of ``rank`` in one of the forms the op passes
    (or a form to fall back on)."""
    o = values.shape[0]
    layout = (1, o) + (1,) * (rank - 2)
    form = draw(st.sampled_from(["layout", "f32", "int", "scalar", "py", "one", "bad"]))
    if form == "layout":
        return values.reshape(layout)
    if form == "f32":
        return values.astype(np.float32).reshape(layout)
    if form == "int":
        return np.rint(values * 100).astype(np.int64).reshape(layout)
    if form == "scalar":
        return np.float64(values[0])
    if form == "py":
        return float(values[0])
    if form == "one":
        return values[:1].reshape((1,) * rank)
    return values.reshape(o, *(1,) * (rank - 1))[:, None]  # not per channel: numpy decides


@st.composite
def conv_rescale_case(draw: Any) -> dict[str, Any]:
    case = draw(conv_case())
    w = np.asarray(case["q_w"])
    o, rank = w.shape[0], w.ndim
    n_w = int(np.prod(w.shape[1:]))
    z_x, z_w = case["z_x"], case["z_w"]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sum_w = z_x * np.sum(w, axis=tuple(range(1, rank))).reshape(1, o, *(1,) * (rank - 2))
    return {
        **case,
        "lsbs": draw(st.sampled_from([0, 0, 1, 3, 7])),
        "offset": draw(st.sampled_from([n_w * z_x * z_w, np.int64(n_w * z_x * z_w), 0.5])),
        "sub": sum_w,
        "mul": _channel_operand(draw, 10.0 ** rng.uniform(-6, 1, size=o), rank),
        "add": draw(st.sampled_from([None, "bias"]))
        and _channel_operand(draw, rng.normal(size=o), rank),
    }


def _conv_rescale_or_error(fn: Any, case: dict[str, Any]) -> Any:
    try:
        return fn(**case)
    except (ValueError, QuantizedOpError) as exc:  # broadcasting refused by numpy too
        return type(exc)


@SETTINGS
@given(conv_rescale_case())
def test_conv_rescale_matches_reference_bit_for_bit(case: dict[str, Any]) -> None:
    got = _conv_rescale_or_error(ik.integer_conv_rescale, case)
    want = _conv_rescale_or_error(spec.integer_conv_rescale_reference, case)
    if isinstance(want, type):
        assert got is want
    else:
        _bits_equal(got, want)


@SETTINGS
@given(conv_rescale_case())
def test_conv_rescale_reference_is_the_unfused_op_steps(case: dict[str, Any]) -> None:
    """The reference is integer_conv, round_bit_pattern, then four float64 ufuncs."""
    geometry = {k: case[k] for k in ("strides", "pads", "group")}
    acc = spec.integer_conv_reference(
        case["q_x"], case["q_w"], case["z_x"], case["z_w"], **geometry
    )
    v = ik.round_bit_pattern(acc[0], case["lsbs"]).astype(np.float64)
    v = np.add(v, case["offset"])
    v = np.subtract(v, case["sub"])
    v = np.multiply(case["mul"], v)
    if case["add"] is not None:
        v = np.add(v, case["add"])
    got = _conv_rescale_or_error(spec.integer_conv_rescale_reference, case)
    if not isinstance(got, type):
        _bits_equal(got, v)


def test_conv_rescale_runs_natively_for_the_op_operands(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fallback(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the numpy reference ran")

    x = np.arange(2 * 3 * 5 * 4, dtype=np.int64).reshape(2, 3, 5, 4) % 7
    w = np.arange(4 * 3 * 2 * 2, dtype=np.int64).reshape(4, 3, 2, 2) % 5 - 2
    sub = 2 * w.sum(axis=(1, 2, 3)).reshape(1, 4, 1, 1)
    mul = np.linspace(0.01, 0.2, 4).reshape(1, 4, 1, 1)
    bias = np.linspace(-1, 1, 4).reshape(1, 4, 1, 1)
    args = (x, w, 2, 1, 3, 24, sub, mul, bias)
    geometry = {"strides": (2, 1), "pads": (1, 0, 1, 1)}
    want = spec.integer_conv_rescale_reference(*args, **geometry)
    monkeypatch.setattr(conv_dispatch, "integer_conv_rescale_reference", no_fallback)
    _bits_equal(ik.integer_conv_rescale(*args, **geometry), want)


def test_conv_rescale_errors_are_typed() -> None:
    ones = np.ones((1, 1, 1, 1))
    big = np.full((1, 1, 3, 3), 2**40, dtype=np.int64)
    w = np.full((1, 1, 3, 3), -(2**25), dtype=np.int64)
    for fn in (ik.integer_conv_rescale, spec.integer_conv_rescale_reference):
        with pytest.raises(OverflowRiskError, match=r"conv2.*uint41.*int26"):
            fn(big, w, 0, 0, 0, 0, ones, ones, name="conv2")
        edge = np.full((1, 1, 1, 1), 2**63 - 4, dtype=np.int64)
        with pytest.raises(OverflowRiskError, match=r"conv3.*leaves int64"):
            fn(edge, np.ones((1, 1, 1, 1), dtype=np.int64), 0, 0, 4, 0, ones, ones, name="conv3")
        with pytest.raises(QuantizationError, match="63 bits"):
            fn(edge, np.ones((1, 1, 1, 1), dtype=np.int64), 0, 0, 63, 0, ones, ones, name="c4")
