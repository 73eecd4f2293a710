"""The native quantization kernels against their numpy reference twins, bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fhequant import _core
from fhequant.errors import DTypeError, EmptyTensorError, NonFiniteError
from fhequant.kernels import quant as kern

FLOAT_DTYPES = [np.float32, np.float64]
OUT_DTYPES = [np.int64, np.int32, np.float32, np.float64]


def assert_same(got: Any, want: Any) -> None:
    """Same Python type, dtype, shape and bytes (so -0.0 != 0.0 and NaN payloads count)."""
    assert type(got) is type(want), (type(got), type(want))
    g, w = np.asarray(got), np.asarray(want)
    assert g.dtype == w.dtype, (g.dtype, w.dtype)
    assert g.shape == w.shape, (g.shape, w.shape)
    assert g.tobytes(order="C") == w.tobytes(order="C"), (g, w)


def quiet(fn: Any, *args: Any) -> Any:
    """Run numpy code that may warn (x/0, NaN casts); the kernels compute the same silently."""
    with np.errstate(all="ignore"):
        return fn(*args)


@st.composite
def float_arrays(draw: Any, min_dims: int = 0, nan: bool = True) -> np.ndarray:
    """Float32/64 arrays of any rank, in C, F, sliced or reversed layouts."""
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    width = 32 if dtype is np.float32 else 64
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=0, max_side=6))
    interesting = [0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 0.125, 0.135, 0.005, -0.004, 1e30]
    elements = st.one_of(
        st.floats(width=width, allow_nan=nan, allow_infinity=nan),
        st.floats(-300, 300, width=width),
        st.floats(-1e9, 1e9, width=width),
        st.sampled_from([dtype(v) for v in interesting]),
        st.integers(-200, 200).map(lambda i: dtype(i / 4)),
    )
    arr = draw(hnp.arrays(dtype, shape, elements=elements))
    layout = draw(st.sampled_from(["C", "F", "reversed", "strided"]))
    if layout == "F":
        arr = np.asfortranarray(arr)
    elif layout == "reversed" and arr.ndim > 0:
        arr = arr[::-1]
    elif layout == "strided" and arr.ndim > 0:
        big = np.repeat(arr, 2, axis=-1)
        arr = big[..., ::-2][..., ::-1]
        assert arr.shape == shape
    return arr


scales = st.one_of(
    st.floats(allow_nan=False, allow_infinity=True).filter(lambda v: v != 0),
    st.sampled_from([1e-45, 1e-300, 1e39, 3.5e38, 1e300, -0.5, 0.1, 1.0 / 3.0, np.inf, -np.inf]),
).flatmap(
    lambda v: st.sampled_from(
        [np.float64(v), float(v)] + ([np.float32(v)] if abs(v) < 3.4e38 else [])
    )
)

int_zps = st.one_of(
    st.sampled_from([0, 1, -32768, -32769, 65535, 65536, 2**31, -(2**40)]),
    st.integers(-70_000, 70_000),
)
zero_points = st.one_of(
    int_zps,
    int_zps.map(np.int64),
    int_zps.map(lambda v: np.array(v)),
    st.floats(-1e6, 1e6),
    st.sampled_from([0.5, 1e39, -1e300]),
    st.floats(-100, 100).map(np.float32),
)


@st.composite
def clip_bounds(draw: Any) -> tuple[int | None, int | None]:
    if draw(st.booleans()):
        return None, None
    n_bits = draw(st.integers(1, 40))
    offset = 2 ** (n_bits - 1) if draw(st.booleans()) else 0
    lo = -offset + (1 if draw(st.booleans()) else 0)
    return lo, 2**n_bits - 1 - offset


@settings(max_examples=400, deadline=None)
@given(
    values=float_arrays(),
    scale=scales,
    zero_point=zero_points,
    bounds=clip_bounds(),
    dtype=st.sampled_from(OUT_DTYPES),
)
def test_quantize_matches_reference(
    values: np.ndarray,
    scale: Any,
    zero_point: Any,
    bounds: tuple[int | None, int | None],
    dtype: Any,
) -> None:
    lo, hi = bounds
    want = quiet(kern.quantize_reference, values, scale, zero_point, lo, hi, dtype)
    got = quiet(kern.quantize, values, scale, zero_point, lo, hi, dtype)
    assert_same(got, want)


@settings(max_examples=100, deadline=None)
@given(
    values=float_arrays(min_dims=1, nan=False),
    scale=st.floats(1e-4, 10),
    zero_point=int_zps,
    bounds=clip_bounds(),
)
def test_quantize_ties_at_half(
    values: np.ndarray, scale: float, zero_point: int, bounds: tuple[int | None, int | None]
) -> None:
    # x = (k + 0.5) * s puts x / s on (or next to) a tie of rint.
    with np.errstate(all="ignore"):
        halves = ((np.rint(values) + 0.5) * values.dtype.type(scale)).astype(values.dtype)
    lo, hi = bounds
    want = quiet(kern.quantize_reference, halves, np.float64(scale), zero_point, lo, hi)
    assert_same(quiet(kern.quantize, halves, np.float64(scale), zero_point, lo, hi), want)


def test_quantize_dtype_rules_of_numpy_126() -> None:
    # 5e6 / 0.1 exceeds 2**25 - 1, a bound float32 cannot hold: the clip must run in float64.
    x = np.array([0.3, 1e6 + 0.5, -2.5, 5e6, -5e6], dtype=np.float32)
    for zp in (65535, 65536, -32768, -32769, np.int64(70_000), 0.5, 1e39):
        for bounds in ((None, None), (-128, 127), (0, 2**31 - 1), (0, 2**25 - 1)):
            for dtype in OUT_DTYPES:
                args = (x, np.float64(0.1), zp, *bounds, dtype)
                assert_same(quiet(kern.quantize, *args), quiet(kern.quantize_reference, *args))


def test_quantize_keeps_memory_order_and_uses_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.asfortranarray(np.linspace(-3, 3, 60, dtype=np.float32).reshape(6, 10))

    def boom(*args: Any) -> None:
        raise AssertionError("fell back to numpy")

    monkeypatch.setattr(kern, "quantize_reference", boom)
    monkeypatch.setattr(kern, "dequantize_reference", boom)
    monkeypatch.setattr(kern, "rounded_unique_reference", boom)
    q = kern.quantize(x, np.float64(0.05), np.int64(3), -128, 127)
    assert q.flags.f_contiguous and q.dtype == np.int64
    d = kern.dequantize(q, np.float64(0.05), np.int64(3))
    assert d.flags.f_contiguous and d.dtype == np.float64
    assert kern.rounded_unique(x[::-1]).dtype == np.float32


def test_quantize_fallbacks_match_reference() -> None:
    x = np.array([[0.25, -1.5], [3.0, 7.5]], dtype=np.float32)
    zp_array = np.array([1.0, -2.0])
    assert_same(
        kern.quantize(x, np.float64(0.5), zp_array, 0, 15),
        kern.quantize_reference(x, np.float64(0.5), zp_array, 0, 15),
    )
    zero_d = np.array(2.5, dtype=np.float32)
    assert_same(
        kern.quantize(zero_d, np.float64(1.0), 0, None, None),
        kern.quantize_reference(zero_d, np.float64(1.0), 0, None, None),
    )
    half = x.astype(np.float16)
    assert_same(
        kern.quantize(half, np.float64(0.5), 1, 0, 7),
        kern.quantize_reference(half, np.float64(0.5), 1, 0, 7),
    )


@settings(max_examples=200, deadline=None)
@given(
    q=st.sampled_from([np.int8, np.int16, np.int32, np.int64]).flatmap(
        lambda t: hnp.arrays(t, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    ),
    layout=st.sampled_from(["C", "F", "reversed"]),
    scale=scales,
    zero_point=st.one_of(zero_points, st.just(np.array([1.0, -3.5]))),
)
def test_dequantize_matches_reference(
    q: np.ndarray, layout: str, scale: Any, zero_point: Any
) -> None:
    if layout == "F":
        q = np.asfortranarray(q)
    elif layout == "reversed" and q.ndim > 0:
        q = q[::-1]
    try:
        want = quiet(kern.dequantize_reference, q, scale, zero_point)
    except ValueError:  # an array zp that does not broadcast
        assume(False)
    assert_same(quiet(kern.dequantize, q, scale, zero_point), want)


@settings(max_examples=300, deadline=None)
@given(values=float_arrays())
def test_min_max_matches_reference(values: np.ndarray) -> None:
    try:
        want = kern.min_max_reference(values, "x")
    except (EmptyTensorError, NonFiniteError) as err:
        with pytest.raises(type(err)) as got:
            kern.min_max(values, "x")
        assert str(got.value).startswith("x: ")
        if isinstance(err, NonFiniteError):
            index = str(err).split("flat index ")[1].split(";")[0]
            assert f"at flat index {index};" in str(got.value)
        return
    got = kern.min_max(values, "x")
    assert_same(got[0], want[0])
    assert_same(got[1], want[1])


@settings(max_examples=100, deadline=None)
@given(values=float_arrays(min_dims=1, nan=False), data=st.data())
def test_min_max_of_batches_equals_whole(values: np.ndarray, data: Any) -> None:
    assume(values.size > 0 and np.isfinite(values).all())
    cuts = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=4)))
    batches = [b for b in np.split(values, cuts) if b.size > 0]
    parts = [kern.min_max(b, "batch") for b in batches]
    lo, hi = kern.min_max(values, "whole")
    assert min(p[0] for p in parts) == lo
    assert max(p[1] for p in parts) == hi
    assert type(lo) is values.dtype.type


def test_min_max_signed_zero_follows_numpy() -> None:
    rng = np.random.default_rng(7)
    for n in (2, 9, 70, 40_000):
        for dtype in FLOAT_DTYPES:
            x = np.zeros(n, dtype)
            x[rng.random(n) < 0.5] = -0.0
            for arr in (x, x[::-1], np.concatenate([x, [dtype(1.0)]])):
                got, want = kern.min_max(arr), kern.min_max_reference(arr)
                assert_same(got[0], want[0])
                assert_same(got[1], want[1])


def test_min_max_errors_name_the_tensor() -> None:
    x = np.zeros((4, 5), np.float32)
    x[3, 1] = np.inf
    x[2, 4] = np.nan
    with pytest.raises(NonFiniteError, match=r"^act\.3: .*flat index 14"):
        kern.min_max(np.asfortranarray(x), "act.3")
    with pytest.raises(EmptyTensorError, match=r"^weights: .*empty"):
        kern.min_max(np.zeros((0, 3)), "weights")
    with pytest.raises(DTypeError, match="float32 or float64"):
        _core.min_max(np.zeros(3, np.int64))
    # Integer data has no finiteness check: numpy semantics via the reference.
    assert_same(kern.min_max(np.array([3, -1]))[0], np.int64(-1))


def _zero_sign_ambiguous(values: np.ndarray) -> bool:
    r = quiet(np.round, values, 2)
    zeros = r[r == 0]
    return bool(np.signbit(zeros).any() and (~np.signbit(zeros)).any())


@settings(max_examples=200, deadline=None)
@given(values=float_arrays())
def test_rounded_unique_matches_reference(values: np.ndarray) -> None:
    want = quiet(kern.rounded_unique_reference, values)
    got = quiet(kern.rounded_unique, values)
    if values.ndim > 0 and not np.isnan(values).any() and _zero_sign_ambiguous(values):
        # numpy's pick between -0.0 and +0.0 depends on positions; the kernel keeps -0.0.
        assert np.array_equal(got, want) and got.dtype == want.dtype
        assert np.signbit(got[got == 0]).all()
        return
    assert_same(got, want)


def test_rounded_unique_wide_range_and_big_arrays() -> None:
    rng = np.random.default_rng(3)
    for dtype in FLOAT_DTYPES:
        narrow = rng.normal(size=200_000).astype(dtype)
        narrow = np.abs(narrow) + dtype(0.01)  # no zeros: fully bit-comparable
        wide = (rng.standard_cauchy(size=50_000) * 1e4).astype(dtype)
        wide[wide == 0] = 1
        for x in (narrow, wide, narrow.reshape(400, 500).T):
            assert_same(kern.rounded_unique(x), kern.rounded_unique_reference(x))


def test_unaligned_and_byte_swapped_arrays_use_numpy() -> None:
    buf = np.zeros(8 * 6 + 1, dtype=np.uint8)
    unaligned = buf[1:].view(np.float64)
    unaligned[:] = np.arange(6) / 7
    assert not unaligned.flags.aligned
    swapped = np.arange(6, dtype=">f8") / 3
    for x in (unaligned, swapped):
        args = (x, np.float64(0.25), 1, 0, 15)
        assert_same(kern.quantize(*args), kern.quantize_reference(*args))
        assert_same(kern.min_max(x)[1], kern.min_max_reference(x)[1])
        assert_same(kern.rounded_unique(x), kern.rounded_unique_reference(x))


@pytest.mark.parametrize(
    "values",
    [
        np.broadcast_to(np.float32(0.3), (4, 5)),
        np.broadcast_to(np.linspace(-1, 1, 5), (3, 5)),
        np.zeros((6, 3, 0)),
        np.zeros((0,), dtype=np.float32),
    ],
    ids=["broadcast-scalar", "broadcast-row", "empty-3d", "empty-1d"],
)
def test_aliasing_and_empty_layouts_match_reference(values: np.ndarray) -> None:
    # ndarray views refuse strides that alias elements (broadcasts, the zero strides of
    # empty arrays): these layouts must still give numpy's answer, never a Rust panic.
    got = kern.quantize(values, np.float64(0.05), 3, -8, 7)
    want = kern.quantize_reference(values, np.float64(0.05), 3, -8, 7)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    q = want.astype(np.int64)
    np.testing.assert_array_equal(
        kern.dequantize(q, np.float64(0.05), 3),
        kern.dequantize_reference(q, np.float64(0.05), 3),
    )


@settings(max_examples=300, deadline=None)
@given(
    values=float_arrays(),
    scale=scales,
    zero_point=zero_points,
    n_bits=st.integers(1, 16),
    signed=st.booleans(),
    narrow=st.booleans(),
)
def test_quantize_narrow_equals_int64_quantize(
    values: np.ndarray, scale: Any, zero_point: Any, n_bits: int, signed: bool, narrow: bool
) -> None:
    offset = 2 ** (n_bits - 1) if signed else 0
    lo, hi = -offset + int(narrow), 2**n_bits - 1 - offset
    want = quiet(kern.quantize_reference, values, scale, zero_point, lo, hi, np.int64)
    got = quiet(kern.quantize_narrow, values, scale, zero_point, lo, hi)
    if got is None:
        # only when the kernel cannot give a lossless narrow result
        fits_int16 = lo > -(2**15) and hi < 2**15
        nan_mark = bool((np.asarray(want) == np.iinfo(np.int64).min).any())  # NaN before cast
        assert (
            not fits_int16
            or nan_mark
            or values.ndim == 0
            or values.size == 0
            or (kern._quant_plan(values, scale, zero_point, lo, hi, np.int64) is None)
        )
        return
    ints, low, high = got
    assert ints.dtype in kern.NARROW_INTS
    assert np.iinfo(ints.dtype).min < lo and hi <= np.iinfo(ints.dtype).max
    assert ints.shape == want.shape
    np.testing.assert_array_equal(ints.astype(np.int64), want)
    assert (low, high) == (int(want.min()), int(want.max()))


def test_quantize_narrow_gives_none_for_nan_and_wide_bounds() -> None:
    x = np.array([0.5, np.nan, 2.0])
    assert kern.quantize_narrow(x, np.float64(0.5), 3, 0, 15) is None
    assert kern.quantize_narrow(x[[0, 2]], np.float64(0.5), 3, -(2**15), 100) is None
    got = kern.quantize_narrow(x[[0, 2]], np.float64(0.5), 3, 0, 15)
    assert got is not None and got[0].dtype == np.int8 and got[0].tolist() == [4, 7]


INDEX_DTYPES = [np.int8, np.int16, np.int32, np.int64]


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(INDEX_DTYPES),
    table_dtype=st.sampled_from(INDEX_DTYPES),
    data=st.data(),
)
def test_int_presence_and_lookup_match_numpy(dtype: Any, table_dtype: Any, data: Any) -> None:
    info = np.iinfo(dtype)
    lo = data.draw(st.integers(max(int(info.min), -300), min(int(info.max), 300)))
    size = data.draw(st.integers(1, 70))
    hi = min(lo + size - 1, int(info.max))
    size = hi - lo + 1
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40))
    q = data.draw(hnp.arrays(dtype, shape, elements=st.integers(lo, hi)))
    tinfo = np.iinfo(table_dtype)
    table = data.draw(
        hnp.arrays(table_dtype, size, elements=st.integers(int(tinfo.min), int(tinfo.max)))
    )
    seen = _core.int_presence(q, lo, size)
    want_seen = np.zeros(size, dtype=bool)
    want_seen[q.reshape(-1).astype(np.int64) - lo] = True
    np.testing.assert_array_equal(seen, want_seen)
    out = _core.int_lookup(q, lo, table)
    assert out.dtype == table.dtype and out.shape == q.shape
    np.testing.assert_array_equal(out, table[q.astype(np.int64) - lo])


def test_int_presence_and_lookup_reject_values_outside_the_table() -> None:
    from fhequant.errors import QuantizationError

    q = np.array([[1, 5], [2, 3]], dtype=np.int16)
    with pytest.raises(QuantizationError, match="outside the table's range"):
        _core.int_presence(q, 1, 4)
    with pytest.raises(QuantizationError, match="outside the table's range"):
        _core.int_lookup(q, 2, np.arange(10, dtype=np.int64))
    with pytest.raises(QuantizationError, match="C-contiguous"):
        _core.int_lookup(np.asfortranarray(q), 1, np.arange(10, dtype=np.int64))
    with pytest.raises(DTypeError):
        _core.int_presence(q.astype(np.uint8), 1, 10)


def test_int_lookup_writes_into_out() -> None:
    q = np.array([[3, 1], [2, 3]], dtype=np.int8)
    table = np.array([10, 20, 30], dtype=np.int64)
    out = np.full((2, 2), -1, dtype=np.int64)
    got = _core.int_lookup(q, 1, table, out)
    assert got is out
    np.testing.assert_array_equal(out, [[30, 10], [20, 30]])
    with pytest.raises(DTypeError):
        _core.int_lookup(q, 1, table, np.empty((2, 2), dtype=np.int32))
    from fhequant.errors import QuantizationError

    for bad in (np.empty((4,), dtype=np.int64), np.empty((2, 2), dtype=np.int64, order="F")):
        with pytest.raises(QuantizationError, match="C-contiguous array of q's shape"):
            _core.int_lookup(q, 1, table, bad)


@settings(max_examples=300, deadline=None)
@given(values=float_arrays())
def test_copy_min_max_is_a_deep_copy_and_min_max(values: np.ndarray) -> None:
    """One read (copy + scan) gives numpy's deep copy and min_max, or min_max's error."""
    fused_applies = values.size > 0 and (values.flags.c_contiguous or values.flags.f_contiguous)
    try:
        want = kern.min_max_reference(values, "x")
    except (EmptyTensorError, NonFiniteError) as err:
        if not fused_applies:
            assert kern.copy_min_max(values, "x") is None
            return
        with pytest.raises(type(err)) as got:
            kern.copy_min_max(values, "x")
        assert str(got.value).startswith("x: ")
        index = str(err).split("flat index ")[1].split(";")[0]
        assert f"at flat index {index};" in str(got.value)
        return
    fused = kern.copy_min_max(values, "x")
    if not fused_applies:
        assert fused is None
        return
    assert fused is not None
    copy, lo, hi = fused
    deep = values.copy(order="K")
    assert_same(copy, deep)
    assert copy.flags.c_contiguous == deep.flags.c_contiguous
    assert copy.flags.f_contiguous == deep.flags.f_contiguous
    assert copy.flags.writeable and copy.flags.owndata
    assert not np.shares_memory(copy, values)
    assert_same(lo, want[0])
    assert_same(hi, want[1])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_copy_min_max_large_arrays_and_layouts(dtype: Any) -> None:
    rng = np.random.default_rng(15)
    x = rng.normal(size=(700, 300)).astype(dtype)  # several parallel chunks
    x[123, 45] = dtype(-7.5)
    for arr in (x, np.asfortranarray(x), x.reshape(-1)):
        copy, lo, hi = kern.copy_min_max(arr, "big")
        assert_same(copy, arr.copy(order="K"))
        assert copy.flags.f_contiguous == arr.flags.f_contiguous
        assert_same(lo, arr.min()) and assert_same(hi, arr.max())
    x[699, 299] = np.nan
    with pytest.raises(NonFiniteError, match=r"^big: .*flat index 209999"):
        kern.copy_min_max(np.asfortranarray(x), "big")
    zeros = np.zeros(50_000, dtype)
    zeros[rng.random(50_000) < 0.5] = -0.0
    copy, lo, hi = kern.copy_min_max(zeros)
    assert_same(lo, zeros.min()) and assert_same(hi, zeros.max())
    assert copy.tobytes() == zeros.tobytes()


def test_copy_min_max_declines_what_it_cannot_copy() -> None:
    assert kern.copy_min_max(np.arange(10.0)[::2]) is None  # strided
    assert kern.copy_min_max(np.arange(6, dtype=">f8")) is None  # byte-swapped
    assert kern.copy_min_max(np.arange(6)) is None  # integers
    assert kern.copy_min_max(np.zeros((3, 0))) is None  # empty: min_max raises
    assert kern.copy_min_max([1.0, 2.0]) is None  # not an ndarray
    # The binding itself: strided views give None, other dtypes a typed error, never a panic.
    assert _core.copy_min_max(np.zeros((4, 6))[:, ::2]) is None
    assert _core.copy_min_max(np.broadcast_to(np.float64(1.0), (3, 4))) is None
    with pytest.raises(DTypeError, match=r"copy_min_max: .*float32 or float64"):
        _core.copy_min_max(np.zeros(3, np.int32))
    with pytest.raises(EmptyTensorError, match=r"^w: "):
        _core.copy_min_max(np.zeros(0), "w")
