"""Quantizer API: the doc examples, docs/contract.md §1 rules, fill_from_kwargs and the §8
errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fhequant import (
    STABILITY_CONST,
    MinMaxQuantizationStats,
    QuantizationOptions,
    QuantizedArray,
    UniformQuantizationParameters,
    UniformQuantizer,
    errors,
    fill_from_kwargs,
)
from fhequant.kernels import quant as _kernels
from fhequant.quantization import quantized_array


def _doc_values() -> np.ndarray:
    np.random.seed(0)
    return np.random.uniform(-2, 2, 10)


# --- the three examples of the issue --------------------------------------------------------


def test_doc_example_7_bits() -> None:
    q = QuantizedArray(7, _doc_values())
    assert q.qvalues.tolist() == [37, 73, 48, 36, 9, 58, 12, 112, 127, 0]
    assert q.quantizer.scale == 0.018274684777173276
    assert q.quantizer.zero_point == 26


def test_doc_example_3_bits() -> None:
    q = QuantizedArray(3, _doc_values())
    assert q.qvalues.tolist() == [2, 4, 2, 2, 0, 3, 0, 6, 7, 0]
    assert q.quantizer.zero_point == 1


def test_doc_example_3_bits_signed_symmetric() -> None:
    q = QuantizedArray(3, _doc_values(), is_signed=True, is_symmetric=True)
    assert q.qvalues.tolist() == [0, 1, 1, 0, 0, 1, 0, 3, 3, -1]
    assert q.quantizer.zero_point == 0


# --- docs/contract.md §1 examples -----------------------------------------------------------------


def test_spec_json_example() -> None:
    q = QuantizedArray(3, np.array([0.1, 0.5, -0.2]))
    assert q.qvalues.tolist() == [3, 7, 0]
    assert type(q.quantizer.scale) is np.float64
    assert q.quantizer.scale == 0.09999999999999999
    assert type(q.quantizer.zero_point) is np.int64
    assert q.quantizer.zero_point == 2
    assert q.quantizer.offset == 0
    assert '"zero_point": {"type_name": "numpy_integer", "serialized_value": 2, ' in q.dumps()


@pytest.mark.parametrize(
    ("values", "n_bits", "zero_point"),
    [([0.2, 1.0], 4, -4), ([0.0947, 0.1304], 3, -19)],
)
def test_zero_not_forced_into_range(values: list[float], n_bits: int, zero_point: int) -> None:
    q = QuantizedArray(n_bits, np.array(values))
    assert q.quantizer.zero_point == zero_point
    assert q.qvalues.min() >= 0 and q.qvalues.max() <= 2**n_bits - 1


def test_degenerate_negative_constant() -> None:
    q = QuantizedArray(4, np.array([-0.5, -0.5]), is_signed=True, is_symmetric=True)
    assert q.quantizer.scale == -0.5
    assert q.quantizer.offset == 0  # even though signed
    assert type(q.quantizer.zero_point) is int and q.quantizer.zero_point == 0
    assert q.qvalues.tolist() == [1, 1]


def test_degenerate_near_zero_uses_unit_scale() -> None:
    q = QuantizedArray(5, np.array([3e-7, 4e-7]), is_signed=True)
    assert q.quantizer.scale == 1.0 and type(q.quantizer.scale) is np.float64
    assert type(q.quantizer.zero_point) is np.int64 and q.quantizer.offset == 0
    assert STABILITY_CONST == 1e-6


def test_symmetric_one_bit_gives_infinite_scale_and_nan_dequant() -> None:
    q = QuantizedArray(1, np.array([-1.0, 2.0]), is_signed=True, is_symmetric=True)
    assert np.isposinf(q.quantizer.scale)
    assert q.qvalues.tolist() == [0, 0]
    assert np.isnan(q.dequant()).all()


def test_qat_asymmetric_zero_point_is_python_zero() -> None:
    q = QuantizedArray(3, np.array([-0.5, 0.0, 0.25, 0.5]), is_signed=True, is_qat=True)
    assert type(q.quantizer.zero_point) is int and q.quantizer.zero_point == 0
    assert q.quantizer.scale == np.float64(1.0) / 7


def test_preset_scale_is_kept_zero_point_recomputed() -> None:
    params = UniformQuantizationParameters(scale=np.float64(0.5), zero_point=99, offset=99)
    params.compute_quantization_parameters(
        QuantizationOptions(4), MinMaxQuantizationStats(rmax=1.0, rmin=-1.0)
    )
    assert params.scale == 0.5
    assert params.offset == 0
    assert params.zero_point == np.rint(15.0 / 2.0)


def test_narrow_raises_the_lower_bound() -> None:
    values = np.linspace(-1.0, 1.0, 11)
    wide = QuantizedArray(4, values, is_signed=True, is_symmetric=True)
    narrow = QuantizedArray(4, values, is_signed=True, is_symmetric=True, is_narrow=True)
    assert wide.quantizer.clip_bounds() == (-8, 7)
    assert narrow.quantizer.clip_bounds() == (-7, 7)
    assert narrow.quantizer.scale == wide.quantizer.scale
    out = narrow.quantizer.quant(np.array([-5.0, 5.0]))
    assert out.tolist() == [-7, 7]


def test_no_clipping_quantizer_goes_outside_the_range() -> None:
    opts = QuantizationOptions(3)
    stats = MinMaxQuantizationStats()
    stats.compute_quantization_stats(np.array([0.0, 7.0]))
    params = UniformQuantizationParameters()
    params.compute_quantization_parameters(opts, stats)
    clipped = UniformQuantizer(opts, stats, params)
    free = UniformQuantizer(opts, stats, params, no_clipping=True)
    assert clipped.quant(np.array([-3.0, 20.0])).tolist() == [0, 7]
    assert free.quant(np.array([-3.0, 20.0])).tolist() == [-3, 20]


def test_quant_dtypes() -> None:
    q = QuantizedArray(4, np.array([0.0, 1.0, 2.5]))
    for dtype in (np.int64, np.int32, np.float32, np.float64, np.dtype("int32")):
        out = q.quantizer.quant(np.array([0.0, 1.0, 2.5]), dtype=dtype)
        assert out.dtype == np.dtype(dtype)
        assert out.tolist() == q.qvalues.tolist()


# --- uvalues and check_is_uniform_quantized -------------------------------------------------


def test_uvalues_use_numpy_two_decimal_round() -> None:
    stats = MinMaxQuantizationStats()
    stats.compute_quantization_stats(np.array([0.135, 0.125, 0.125, 1.0]))
    assert stats.uvalues is not None
    assert stats.uvalues.tolist() == [0.12, 0.14, 1.0]
    assert type(stats.rmin) is np.float64 and stats.rmin == 0.125


def test_check_is_uniform_quantized() -> None:
    opts = QuantizationOptions(3)
    stats = MinMaxQuantizationStats()
    stats.compute_quantization_stats(np.array([0.0, 0.25, 0.5, 1.0, 0.75]))
    assert stats.check_is_uniform_quantized(opts) is True
    stats.compute_quantization_stats(np.array([0.0, 0.3, 1.0]))
    assert stats.check_is_uniform_quantized(opts) is False
    stats.compute_quantization_stats(np.array([2.0, 2.0]))
    assert stats.check_is_uniform_quantized(opts) is False  # one unique value
    stats.compute_quantization_stats(np.arange(9) / 8)
    assert stats.check_is_uniform_quantized(opts) is False  # 9 > 2**3 values
    assert stats.check_is_uniform_quantized(QuantizationOptions(4)) is True


def test_uvalues_do_not_change_parameters_or_equality() -> None:
    a = MinMaxQuantizationStats()
    a.compute_quantization_stats(np.array([0.0, 0.5, 1.0]))
    b = MinMaxQuantizationStats(rmax=np.float64(1.0), rmin=np.float64(0.0))
    assert a == b and b.uvalues is None
    assert a.quant_stats.uvalues is a.uvalues


# --- options ----------------------------------------------------------------------------------


def test_options_equality_and_is_equal() -> None:
    a = QuantizationOptions(4, is_signed=True)
    b = QuantizationOptions(4, is_signed=True)
    assert a == b
    b.is_narrow = True
    assert a != b
    assert a.is_equal(b)  # is_narrow is not compared by is_equal
    c = QuantizationOptions(4, is_qat=True)
    assert not a.is_equal(c)
    d = QuantizationOptions(4, is_signed=False, is_qat=False)
    assert not a.is_equal(d)
    a_qat = QuantizationOptions(4, is_signed=True, is_qat=True)
    assert a_qat.is_equal(c, ignore_sign_qat=True)
    assert not a_qat.is_equal(c)


def test_copy_opts_and_quant_options() -> None:
    a = QuantizationOptions(6, is_signed=True)
    a.is_precomputed_qat = True
    b = QuantizationOptions(2)
    b.copy_opts(a)
    assert b == a
    copy = a.quant_options
    assert copy == a and copy is not a


# --- UniformQuantizer attributes ------------------------------------------------------------


def test_quantizer_copies_its_parts_and_casts_scale() -> None:
    opts = QuantizationOptions(5, is_signed=True)
    stats = MinMaxQuantizationStats(rmax=1.0, rmin=-1.0)
    params = UniformQuantizationParameters(scale=0.25, zero_point=1, offset=16)
    q = UniformQuantizer(opts, stats, params)
    assert type(q.scale) is np.float64 and params.scale == 0.25 and type(params.scale) is float
    assert (q.n_bits, q.is_signed, q.rmax, q.rmin, q.zero_point, q.offset) == (
        5,
        True,
        1.0,
        -1.0,
        1,
        16,
    )
    opts.n_bits = 9
    q.scale = np.float64(2.0)
    assert q.n_bits == 5 and params.scale == 0.25
    assert q.quant_params == UniformQuantizationParameters(np.float64(2.0), 1, 16)
    assert q.quant_stats == stats
    assert q.quant_options == QuantizationOptions(5, is_signed=True)


def test_bare_quantizer_has_no_n_bits() -> None:
    q = UniformQuantizer()
    assert not hasattr(q, "n_bits")
    assert q.is_signed is False and q.scale is None and q.rmin is None
    text = q.dumps()
    assert text.startswith('{"type_name": "UniformQuantizer", "serialized_value": {"is_signed"')
    assert UniformQuantizer.loads(text) == q


def test_quantizer_equality() -> None:
    q = QuantizedArray(4, np.array([0.0, 1.0, 3.0])).quantizer
    other = UniformQuantizer.loads(q.dumps())
    assert other == q
    other.no_clipping = True
    assert other != q
    array_zp = UniformQuantizer(params=UniformQuantizationParameters(1.0, np.array([1.0, 2.0]), 0))
    same = UniformQuantizer(params=UniformQuantizationParameters(1.0, np.array([1.0, 2.0]), 0))
    assert array_zp == same
    same.zero_point = np.array([1.0, 3.0])
    assert array_zp != same


def test_dequant_accepts_array_zero_point() -> None:
    q = UniformQuantizer(params=UniformQuantizationParameters(0.5, np.array([1.0, -2.0]), 0))
    out = q.dequant(np.array([[3, 3], [1, 0]]))
    assert out.dtype == np.float64
    assert out.tolist() == [[1.0, 2.5], [0.0, 1.0]]


def test_hot_paths_go_through_the_kernel_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def spy(name: str):  # type: ignore[no-untyped-def]
        real = getattr(_kernels, name)

        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(name)
            return real(*args, **kwargs)

        return wrapper

    for name in ("quantize", "dequantize", "min_max", "copy_min_max", "rounded_unique"):
        monkeypatch.setattr(_kernels, name, spy(name))
    q = QuantizedArray(4, np.array([0.0, 1.0, 3.0]))
    q.dequant()
    # the copy of the values and their range come from one kernel (one read of the data)
    assert calls == ["copy_min_max", "rounded_unique", "quantize", "dequantize"]


# --- QuantizedArray -------------------------------------------------------------------------


def test_scalar_input() -> None:
    q = QuantizedArray(4, 0.75)
    assert isinstance(q.values, np.ndarray) and q.values.shape == () and q.values.dtype == "f8"
    assert type(q.qvalues) is np.int64
    assert q() is q.qvalues


def test_options_are_copied_and_n_bits_always_wins() -> None:
    opts = QuantizationOptions(8, is_signed=True)
    q = QuantizedArray(3, np.array([-1.0, 1.0]), options=opts)
    assert opts.n_bits == 8
    assert q.n_bits == 3 and q.quantizer.n_bits == 3 and q.quantizer.is_signed


def test_values_are_copied_and_kept() -> None:
    data = np.array([0.1, 0.2, 0.9])
    q = QuantizedArray(4, data)
    data[0] = 5.0
    assert q.values[0] == 0.1
    assert q.values is not q.dequant()  # dequant() overwrites values
    assert q.values.tolist() == q.quantizer.dequant(q.qvalues).tolist()


def test_update_values_and_update_quantized_values() -> None:
    q = QuantizedArray(4, np.array([0.0, 1.5, 3.0]))
    new = np.array([3.0, 0.0])
    assert q.update_values(new).tolist() == [15, 0]
    new[0] = 0.0
    assert q.values.tolist() == [3.0, 0.0]
    assert q.update_quantized_values(np.array([5, 10])).tolist() == [1.0, 2.0]
    assert q.qvalues.tolist() == [5, 10]


def test_integer_values_are_dequantized() -> None:
    q = QuantizedArray(
        4, np.array([1, 5], dtype=np.int32), value_is_float=False, scale=0.5, zero_point=1, offset=0
    )
    assert q.qvalues.dtype == np.int32
    assert q.values.dtype == np.float64 and q.values.tolist() == [0.0, 2.0]
    assert q.quantizer.rmin is None


def test_values_none_only_builds_the_quantizer() -> None:
    q = QuantizedArray(6, None, is_signed=True, scale=0.1, zero_point=0, offset=32)
    assert q.values is None and q.qvalues is None
    assert q.quantizer.quant(np.array([0.25])).tolist() == [2]


def test_quantizer_only_array_round_trips() -> None:
    q = QuantizedArray(6, None, is_signed=True, scale=0.1, zero_point=0, offset=32)
    assert '"values": null, "qvalues": null' in q.dumps()
    loaded = QuantizedArray.loads(q.dumps())
    assert loaded == q and loaded.values is None and loaded.quantizer.offset == 32


def test_explicit_stats_keep_python_floats() -> None:
    q = QuantizedArray(2, np.array([-5.0, 0.0, 5.0]), rmin=-1.0, rmax=1.0)
    assert type(q.quantizer.rmin) is float and type(q.quantizer.scale) is np.float64
    assert q.qvalues.tolist() == [0, 2, 3]
    assert '"rmax": 1.0, "rmin": -1.0,' in q.dumps()


# --- fill_from_kwargs -----------------------------------------------------------------------


def test_fill_from_kwargs_creates_and_returns_leftovers() -> None:
    obj, rest = fill_from_kwargs(None, MinMaxQuantizationStats, True, rmin=0.0, rmax=1.0, x=3)
    assert isinstance(obj, MinMaxQuantizationStats) and (obj.rmin, obj.rmax) == (0.0, 1.0)
    assert rest == {"x": 3}
    none, rest = fill_from_kwargs(None, MinMaxQuantizationStats, True, x=3)
    assert none is None and rest == {"x": 3}


def test_fill_from_kwargs_mutates_the_given_object() -> None:
    params = UniformQuantizationParameters(scale=1.0)
    QuantizedArray(4, np.array([0.5]), params=params, zero_point=2, offset=0)
    assert (params.scale, params.zero_point, params.offset) == (1.0, 2, 0)


def test_fill_from_kwargs_accept_missing() -> None:
    empty = MinMaxQuantizationStats()
    obj, _ = fill_from_kwargs(empty, MinMaxQuantizationStats, True)
    assert obj is empty
    with pytest.raises(errors.ArgumentError, match="UniformQuantizationParameters: missing"):
        fill_from_kwargs(UniformQuantizationParameters(), UniformQuantizationParameters, False)


# --- docs/contract.md §8 errors: type and message -------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"is_symmetric": True}, ("is_symmetric", "is_signed")),
        ({"is_signed": True, "is_symmetric": True, "is_qat": True}, ("is_qat", "is_symmetric")),
    ],
)
def test_conflicting_options(kwargs: dict[str, bool], names: tuple[str, ...]) -> None:
    with pytest.raises(errors.QuantizationError) as info:
        QuantizationOptions(4, **kwargs)
    assert isinstance(info.value, ValueError)
    assert all(name in str(info.value) for name in names)
    with pytest.raises(ValueError, match=names[0]):
        QuantizedArray(4, np.array([0.0, 1.0]), **kwargs)  # type: ignore[arg-type]
    opts = QuantizationOptions(4)
    for key, value in kwargs.items():
        setattr(opts, key, value)
    with pytest.raises(ValueError, match="compute_quantization_parameters.*" + names[0]):
        UniformQuantizationParameters().compute_quantization_parameters(
            opts, MinMaxQuantizationStats(rmax=1.0, rmin=0.0)
        )


def test_empty_tensor_names_the_tensor() -> None:
    with pytest.raises(errors.EmptyTensorError, match="QuantizedArray values"):
        QuantizedArray(4, np.zeros((0, 3)))
    with pytest.raises(ValueError, match="calib"):
        MinMaxQuantizationStats().compute_quantization_stats(np.array([]), name="calib")


def test_non_finite_calibration_data_is_rejected() -> None:
    with pytest.raises(errors.NonFiniteError, match="QuantizedArray values"):
        QuantizedArray(4, np.array([0.0, np.nan]))


def test_uniform_check_without_uvalues() -> None:
    with pytest.raises(errors.QuantizationError, match="uvalues"):
        MinMaxQuantizationStats(1.0, 0.0).check_is_uniform_quantized(QuantizationOptions(3))


def test_params_need_stats() -> None:
    with pytest.raises(errors.QuantizationError, match="rmin"):
        UniformQuantizationParameters().compute_quantization_parameters(
            QuantizationOptions(3), MinMaxQuantizationStats(rmax=1.0)
        )


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, "int64", int, float, np.bool_])
def test_quant_dtype_not_allowed(dtype: object) -> None:
    q = QuantizedArray(4, np.array([0.0, 1.0]))
    with pytest.raises(errors.DTypeError, match="dtype") as info:
        q.quantizer.quant(np.array([0.5]), dtype=dtype)
    assert isinstance(info.value, TypeError)
    assert str(getattr(dtype, "__name__", dtype)) in str(info.value)


def test_dequant_with_non_float_scale() -> None:
    q = UniformQuantizer(params=UniformQuantizationParameters(2.0, 0, 0))
    q.scale = 2
    with pytest.raises(errors.DTypeError, match="scale must be a float, got int"):
        q.dequant(np.array([1]))


def test_quant_before_parameters() -> None:
    with pytest.raises(errors.NotCalibratedError, match="scale"):
        UniformQuantizer(QuantizationOptions(3)).quant(np.array([1.0]))


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.bool_])
def test_non_float_values_with_value_is_float(dtype: type) -> None:
    with pytest.raises(errors.DTypeError, match=np.dtype(dtype).name):
        QuantizedArray(4, np.array([1, 0], dtype=dtype))


def test_float_values_with_value_is_float_false() -> None:
    with pytest.raises(errors.DTypeError, match="float32"):
        QuantizedArray(
            4,
            np.array([1.0], dtype=np.float32),
            value_is_float=False,
            scale=1.0,
            zero_point=0,
            offset=0,
        )


def test_integer_values_without_params() -> None:
    with pytest.raises(errors.ArgumentError, match="scale, zero_point and offset"):
        QuantizedArray(4, np.array([1, 2]), value_is_float=False)


def test_partial_stats_and_params_name_missing_and_given() -> None:
    with pytest.raises(errors.ArgumentError, match=r"missing rmin \(given: rmax\)"):
        QuantizedArray(4, np.array([0.0, 1.0]), rmax=1.0)
    with pytest.raises(errors.ArgumentError, match=r"missing zero_point, offset \(given: scale\)"):
        QuantizedArray(4, np.array([0.0, 1.0]), scale=0.1)


def test_unexpected_kwargs_are_named() -> None:
    with pytest.raises(errors.ArgumentError, match="no_clipping, foo"):
        QuantizedArray(4, np.array([0.0, 1.0]), no_clipping=True, foo=1)


# --- deferred quantization (defer=True) -----------------------------------------------------


def _qa_pair(values: np.ndarray, float_side: bool) -> tuple[QuantizedArray, QuantizedArray]:
    """The same QuantizedArray built eagerly and with defer=True."""
    opts = QuantizationOptions(5, is_signed=True)
    ref = QuantizedArray(5, values, options=opts)
    stats, params = ref.quantizer.quant_stats, ref.quantizer.quant_params
    data = values if float_side else ref.qvalues
    return tuple(  # type: ignore[return-value]
        QuantizedArray(
            5,
            data,
            value_is_float=float_side,
            options=opts,
            stats=stats,
            params=params,
            defer=defer,
        )
        for defer in (False, True)
    )


@pytest.mark.parametrize("float_side", [True, False])
def test_deferred_side_equals_the_eager_one(float_side: bool) -> None:
    values = np.random.default_rng(3).normal(size=(40, 3)).astype(np.float32)
    eager, lazy = _qa_pair(values, float_side)
    pending = "_qvalues" if float_side else "_values"
    assert getattr(lazy, pending) is None  # nothing computed yet
    assert lazy == eager  # reads (computes) both sides
    np.testing.assert_array_equal(lazy.qvalues, eager.qvalues)
    np.testing.assert_array_equal(lazy.values, eager.values)
    assert lazy.values.dtype == eager.values.dtype and lazy.qvalues.dtype == eager.qvalues.dtype
    assert lazy.dumps() == eager.dumps()


@pytest.mark.parametrize("float_side", [True, False])
def test_replacing_the_given_side_keeps_the_deferred_one_of_the_old_data(float_side: bool) -> None:
    values = np.linspace(-1.0, 2.0, 12)
    eager, lazy = _qa_pair(values, float_side)
    if float_side:  # qvalues were those of the old values, as when computed eagerly
        lazy.values = eager.values = values * 0
        np.testing.assert_array_equal(lazy.qvalues, eager.qvalues)
        assert lazy.qvalues.any()
    else:
        lazy.qvalues = eager.qvalues = eager.qvalues * 0
        np.testing.assert_array_equal(lazy.values, eager.values)
        assert lazy.values.any()
    # the other setter drops the pending side; quant/dequant recompute as before
    _, lazy = _qa_pair(values, float_side)
    if float_side:
        lazy.qvalues = np.zeros(12, dtype=np.int64)
        np.testing.assert_array_equal(lazy.values, values)
    else:
        lazy.values = values * 3
        np.testing.assert_array_equal(lazy.qvalues, eager.quantizer.quant(eager.values))
    np.testing.assert_array_equal(lazy.quant(), lazy.quantizer.quant(lazy.values))


def test_defer_needs_parameters_and_keeps_construction_errors() -> None:
    for defer in (False, True):
        with pytest.raises(errors.ArgumentError, match="missing scale"):
            QuantizedArray(
                4, np.arange(3), value_is_float=False, zero_point=0, offset=0, defer=defer
            )
    # without parameters (or with an integer scale) nothing is deferred: the call raises now
    empty = UniformQuantizer(QuantizationOptions(4))
    assert not quantized_array._ready(empty, dequant=False)
    empty.scale, empty.zero_point = 1, 0
    assert quantized_array._ready(empty, dequant=False)
    assert not quantized_array._ready(empty, dequant=True)
    # a deepcopy keeps the pending side
    _, lazy = _qa_pair(np.linspace(0.0, 1.0, 5), True)
    copied = copy.deepcopy(lazy)
    np.testing.assert_array_equal(copied.qvalues, lazy.qvalues)


def test_deep_copied_options_are_equal_and_independent() -> None:
    opts = QuantizationOptions(5, is_signed=True)
    opts.is_narrow = True
    copied = copy.deepcopy(opts)
    assert copied == opts and copied is not opts
    assert type(copied) is QuantizationOptions
    copied.n_bits = 7
    copied.is_signed = False
    assert (opts.n_bits, opts.is_signed, opts.is_narrow) == (5, True, True)
    bare = copy.deepcopy(QuantizationOptions._without_n_bits())
    assert not hasattr(bare, "n_bits") and bare.is_signed is False


def test_deep_copied_options_copy_mutable_attributes_of_subclasses() -> None:
    class Tagged(QuantizationOptions):
        pass

    opts = Tagged(4)
    opts.tags = ["a"]  # type: ignore[attr-defined]
    pair = copy.deepcopy([opts, opts])
    assert pair[0] is pair[1], "the memo keeps one copy of an object seen twice"
    assert type(pair[0]) is Tagged and pair[0] == opts
    pair[0].tags.append("b")  # type: ignore[attr-defined]
    assert opts.tags == ["a"]  # type: ignore[attr-defined]
