"""The AVX2 strategies of the integer Gemm and Conv at their limits: i16 (``vpmaddwd``) and,
for the Gemm, u8 x i8 with pair sums in i16 (``vpmaddubsw``).

Every case is computed with the strategy allowed and forbidden (the f32/f64/i64 strategies)
in the same process and compared with the numpy int64 reference: the integers (and the
fused rescale's float64 bits) must be identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import _core
from fhequant import kernels as ik
from fhequant.kernels import reference as spec

SETTINGS = settings(max_examples=60, deadline=None)
I32_MAX = 2**31 - 1


def both_ways(
    fn: Callable[[], Any], switch: Callable[..., bool] = _core.int_i16
) -> tuple[Any, Any]:
    """``fn()`` with the i16 strategy allowed, then forbidden (the switch is restored)."""
    on = switch()
    try:
        switch(True)
        new = fn()
        assert not switch(False)
        old = fn()
    finally:
        assert switch(on) == on
    return new, old


def centred_max(lo: int, hi: int) -> tuple[int, int]:
    """The most negative and most positive value of [lo, hi] minus its floor midpoint."""
    mid = lo + (hi - lo) // 2
    return lo - mid, hi - mid


@st.composite
def wide_operands_case(draw: Any) -> dict[str, Any]:
    """A Gemm whose operands centre into i16 or just past it, with K at or one past the
    largest K for which K·max|A'|·max|W'| fits i32, and the worst-case dot products
    present (a row of A at its maximum against a column of W at its maximum)."""
    a_span = draw(st.sampled_from([255, 256, 4000, 65534, 65535]))
    c_span = draw(st.sampled_from([1, 255, 2000, 65534, 65535]))
    a_lo = draw(st.sampled_from([0, -70_000, 12345, -a_span // 2]))
    c_lo = draw(st.sampled_from([-(c_span // 2), -3, 0]))
    z_w = draw(st.sampled_from([0, 7, -300]))
    lo_a, hi_a = centred_max(a_lo, a_lo + a_span)
    lo_c, hi_c = centred_max(c_lo, c_lo + c_span)
    per_term = max(-lo_a, hi_a) * max(-lo_c, hi_c)
    k_limit = I32_MAX // per_term
    ks = [k for k in (k_limit, k_limit + 1) if 1 <= k <= 3000]
    k = draw(st.sampled_from(ks)) if ks else draw(st.integers(1, 40))
    m, n = draw(st.sampled_from([2, 3, 4, 5, 9, 64, 65])), draw(st.integers(2, 27))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.integers(a_lo, a_lo + a_span, size=(m, k), endpoint=True)
    c = rng.integers(c_lo, c_lo + c_span, size=(k, n), endpoint=True)
    a[0], c[:, 0] = a_lo + a_span, c_lo + c_span  # the largest positive product sums
    a[-1, 0], c[-1, -1] = a_lo, c_lo  # both ends of both ranges present
    return {"a": a, "w": c + z_w, "z_w": z_w}


def i16_fits(a: np.ndarray, c: np.ndarray) -> bool:
    """Whether A and C = W - z_w centre into i16 with every dot product within i32."""
    lo_a, hi_a = centred_max(int(a.min()), int(a.max()))
    lo_c, hi_c = centred_max(int(c.min()), int(c.max()))
    bound = a.shape[1] * max(-lo_a, hi_a) * max(-lo_c, hi_c)
    return min(lo_a, lo_c) >= -(2**15) and max(hi_a, hi_c) <= 2**15 - 1 and bound <= I32_MAX


def maddubs_fits(a: np.ndarray, c: np.ndarray) -> bool:
    """Whether A and C = W - z_w centre into u8 (A - min A) and i8 (C - t) with no pair sum of
    ``vpmaddubsw`` leaving i16 and every dot product within i32 (the U8I8Avx2 plan)."""
    a_span = int(a.max()) - int(a.min())
    c_lo, c_hi = int(c.min()), int(c.max())
    if a_span > 255 or c_hi - c_lo > 255:
        return False
    t = c_lo + (c_hi - c_lo + 1) // 2
    c_max = max(t - c_lo, c_hi - t)
    return 2 * a_span * c_max <= 2**15 - 1 and a.shape[1] * a_span * c_max <= I32_MAX


@SETTINGS
@given(wide_operands_case())
def test_gemm_i16_limits_match_numpy_int64(case: dict[str, Any]) -> None:
    a, w, z_w = case["a"], case["w"], case["z_w"]
    want = spec.integer_gemm_reference(a, w, 0, z_w)
    new, old = both_ways(lambda: ik.integer_gemm(a, w, 0, z_w))
    for got in (new, old):
        for g, x in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, x)
    strategy = both_ways(lambda: _core.int_matmul_plan(a[None], w[None], z_w)[0])[0]
    if not _core.int_vnni():
        narrow = maddubs_fits(a, w - z_w) and _core.int_u8i8_avx2()
        assert (strategy == "i16") == (i16_fits(a, w - z_w) and _core.int_i16() and not narrow)
    # The fused rescale: the same float64 bits either way.
    n = w.shape[1]
    sub, mul = np.arange(n) * 0.25, np.linspace(1e-6, 1e-3, n)
    args = (a, w, z_w, 3, 0.5, sub, mul, None)
    new_r, old_r = both_ways(lambda: ik.integer_gemm_rescale(*args))
    want_r = spec.integer_gemm_rescale_reference(*args)
    for got in (new_r, old_r):
        np.testing.assert_array_equal(np.asarray(got).view(np.uint64), want_r.view(np.uint64))


@st.composite
def wide_conv_case(draw: Any) -> dict[str, Any]:
    """A conv with an input wider than u8 (so VNNI never applies), odd channel-tap counts,
    groups, strides, pads (the pad value z_x at or past the input's ends), batches across
    the 4096-column blocks and output positions across the 8-column panels."""
    group = draw(st.sampled_from([1, 2, 3]))
    cg, og = draw(st.integers(1, 4)), draw(st.integers(1, 9))
    n = draw(st.sampled_from([1, 3, 70]))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, wd = draw(st.integers(kh, kh + 6)), draw(st.integers(kw, kw + 6))
    span = draw(st.sampled_from([256, 3000, 30_000]))
    lo = draw(st.sampled_from([0, -1000, 20_000, -span // 2]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(lo, lo + span, size=(n, cg * group, h, wd), endpoint=True)
    z_x = draw(st.sampled_from([lo, lo + span, lo - 5, 0]))
    c_amp = draw(st.sampled_from([1, 128, 700, 20_000]))
    z_w = draw(st.sampled_from([0, 7]))
    w = rng.integers(-c_amp, c_amp, size=(og * group, cg, kh, kw), endpoint=True) + z_w
    w.flat[0], w.flat[-1] = c_amp + z_w, -c_amp + z_w
    pad = draw(st.integers(0, 2))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    return {
        "q_x": x,
        "q_w": w,
        "z_x": z_x,
        "z_w": z_w,
        "strides": list(stride),
        "pads": [pad, min(pad, 1), pad, 0],
        "group": group,
    }


@SETTINGS
@given(wide_conv_case())
def test_conv_i16_matches_numpy_int64(case: dict[str, Any]) -> None:
    want = spec.integer_conv_reference(**case)
    # The Conv's i16 strategy is off by default (slower on small channel counts): switch it on.
    new, old = both_ways(lambda: ik.integer_conv(**case), _core.int_i16_conv)
    for got in (new, old):
        for g, x in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, x)
    o = case["q_w"].shape[0]
    sub, mul = (np.arange(o) * 0.5).reshape(o, 1, 1), np.full((o, 1, 1), 1e-4)
    rescale = {"lsbs": 2, "offset": 0.5, "sub": sub, "mul": mul}
    new_r, old_r = both_ways(lambda: ik.integer_conv_rescale(**case, **rescale), _core.int_i16_conv)
    want_r = spec.integer_conv_rescale_reference(**case, **rescale)
    for got in (new_r, old_r):
        np.testing.assert_array_equal(np.asarray(got).view(np.uint64), want_r.view(np.uint64))


@pytest.fixture
def vnni_off() -> Iterator[None]:
    on = _core.int_vnni()
    _core.int_vnni(False)
    try:
        yield
    finally:
        assert _core.int_vnni(on) == on


@pytest.mark.usefixtures("vnni_off")
def test_i16_is_selected_for_calibration_operands_and_switchable() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, size=(1, 100, 64), endpoint=True)
    w = rng.integers(-127, 127, size=(1, 64, 128), endpoint=True)
    on = _core.int_i16()  # False only on CPUs without AVX2
    want = spec.integer_gemm_reference(a[0], w[0], 0, 3)[0]
    try:
        assert _core.int_matmul_plan(a, w, 3)[0] == ("i16" if on else "f32")
        np.testing.assert_array_equal(_core.int_matmul(a, w, 3)[0], want)
        assert _core.int_i16(False) is False
        assert _core.int_matmul_plan(a, w, 3)[0] == "f32"
        np.testing.assert_array_equal(_core.int_matmul(a, w, 3)[0], want)
    finally:
        assert _core.int_i16(True) == on
    # A 17-bit input does not centre into i16: the float strategies take over.
    wide = np.array([[[0, 2**16]]])
    assert _core.int_matmul_plan(wide, np.ones((1, 2, 1), np.int64), 0)[0] == "f32"


# --- the u8 x i8 AVX2 strategy (vpmaddubsw, pair sums in i16) -------------------------------


@st.composite
def narrow_operands_case(draw: Any) -> dict[str, Any]:
    """A Gemm whose operands centre into u8 x i8 with the weights' range at the widest for
    which no pair sum 2·max(A - s)·max|C - t| leaves i16, or one value wider (then the
    strategy must not be chosen); the worst-case i16 partial sums present (a row of A at its
    maximum against a column of C at its minimum); M, K, N across the 6-row tiles, the
    64-row blocks, the groups of 4 k, the i16 accumulation steps and the 8-column panels."""
    a_span = draw(st.sampled_from([1, 31, 63, 64, 127, 128, 255, 256]))
    c_limit = (2**15 - 1) // (2 * a_span)
    widest = min(2 * c_limit, 255)
    c_span = draw(st.sampled_from([widest, widest + 1, max(widest // 3, 1), 62, 30]))
    a_lo = draw(st.sampled_from([0, -32, 1000, -(2**20)]))
    c_lo = draw(st.sampled_from([-(c_span // 2), -(c_span + 1) // 2, -c_span, 0]))
    z_w = draw(st.sampled_from([0, 3, -40]))
    m = draw(st.sampled_from([1, 5, 6, 7, 64, 65, 131]))
    k, n = draw(st.integers(1, 300)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.integers(a_lo, a_lo + a_span, size=(m, k), endpoint=True)
    c = rng.integers(c_lo, c_lo + c_span, size=(k, n), endpoint=True)
    a[0], c[:, 0] = a_lo + a_span, c_lo  # the most negative i16 partial sums
    a[-1, -1], c[-1, -1] = a_lo, c_lo + c_span  # both ends of both ranges present
    return {"a": a, "w": c + z_w, "z_w": z_w}


@SETTINGS
@given(narrow_operands_case())
def test_gemm_u8i8_avx2_limits_match_numpy_int64(case: dict[str, Any]) -> None:
    a, w, z_w = case["a"], case["w"], case["z_w"]
    want = spec.integer_gemm_reference(a, w, 0, z_w)[0]
    new, old = both_ways(lambda: _core.int_matmul(a[None], w[None], z_w), _core.int_u8i8_avx2)
    np.testing.assert_array_equal(new[0], want)
    np.testing.assert_array_equal(old[0], want)
    name, s, t = both_ways(
        lambda: _core.int_matmul_plan(a[None], w[None], z_w), _core.int_u8i8_avx2
    )[0]
    if not _core.int_vnni():
        fits = maddubs_fits(a, w - z_w)
        assert (name == "u8i8_avx2") == (fits and _core.int_u8i8_avx2())
    if name == "u8i8_avx2":
        c = w - z_w - t
        assert s == a.min() and c.min() >= -128 and c.max() <= 127
    # The fused rescale and requantisation: the same bits either way.
    n = w.shape[1]
    sub, mul = np.arange(n) * 0.25, np.linspace(1e-4, 1e-2, n)
    for dtype, hi in (("int8", 63.0), ("int16", 3e4)):
        args = (a[None], w[None], z_w, 2, 0.5, sub, mul, None, 0.5, 3.0, -hi, hi, dtype)
        on, off = both_ways(lambda a=args: _core.int_matmul_rescale_quant(*a), _core.int_u8i8_avx2)
        assert on[0].dtype == off[0].dtype
        np.testing.assert_array_equal(on[0], off[0])
        assert on[1:] == off[1:]
    args_r = (a, w, z_w, 3, 0.5, sub, mul, None)
    new_r, old_r = both_ways(lambda: ik.integer_gemm_rescale(*args_r), _core.int_u8i8_avx2)
    want_r = spec.integer_gemm_rescale_reference(*args_r)
    for got in (new_r, old_r):
        np.testing.assert_array_equal(np.asarray(got).view(np.uint64), want_r.view(np.uint64))


@pytest.mark.usefixtures("vnni_off")
def test_u8i8_avx2_is_selected_for_6_bit_calibration_operands_and_switchable() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(0, 63, size=(1, 300, 128), endpoint=True)
    w = rng.integers(-31, 31, size=(1, 128, 128), endpoint=True)
    want = spec.integer_gemm_reference(a[0], w[0], 0, 0)[0]
    on, i16 = _core.int_u8i8_avx2(), _core.int_i16()  # False only on CPUs without AVX2
    try:
        assert _core.int_matmul_plan(a, w, 0) == (
            ("u8i8_avx2" if on else "i16" if i16 else "f32"),
            0,
            0,
        )
        np.testing.assert_array_equal(_core.int_matmul(a, w, 0)[0], want)
        assert _core.int_u8i8_avx2(False) is False
        assert _core.int_matmul_plan(a, w, 0)[0] == ("i16" if i16 else "f32")
        np.testing.assert_array_equal(_core.int_matmul(a, w, 0)[0], want)
    finally:
        assert _core.int_u8i8_avx2(True) == on
    # One weight value more than the pair bound allows at an 8-bit input: not chosen.
    a8 = np.array([[[0, 255, 7]]])
    assert _core.int_matmul_plan(a8, np.array([[[-64], [64], [0]]]), 0)[0] == (
        "u8i8_avx2" if on else "i16" if i16 else "f32"
    )
    assert _core.int_matmul_plan(a8, np.array([[[-64], [65], [0]]]), 0)[0] == (
        "i16" if i16 else "f32"
    )
