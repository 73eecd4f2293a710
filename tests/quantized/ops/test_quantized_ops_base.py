"""The op contract: inputs and constants, the re-quantization rule, rounding
(docs/contract.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant.errors import (
    InvalidOptionKeyError,
    NotCalibratedError,
    QuantizedOpError,
    UnsupportedOptionError,
)
from fhequant.quantization import QuantizationOptions, QuantizedArray
from fhequant.quantized import (
    CLEAR,
    TRACING,
    QuantizedAdd,
    QuantizedGemm,
    QuantizedRelu,
    QuantizedReshape,
    compute_bits_precision,
    normalize_rounding_threshold_bits,
)
from fhequant.quantized.exec import fhe_module
from quantized_ops_helpers import qa_float, qa_int

Exactness = fhe_module().Exactness

# --- rounding_threshold_bits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        (None, None),
        (4, {"n_bits": 4, "method": "EXACT"}),
        ({"n_bits": 2}, {"n_bits": 2, "method": "EXACT"}),
        ({"n_bits": 8, "method": "approximate"}, {"n_bits": 8, "method": "APPROXIMATE"}),
        ({"n_bits": 5, "method": "Exact"}, {"n_bits": 5, "method": "EXACT"}),
        ({"n_bits": 6, "method": Exactness.APPROXIMATE}, {"n_bits": 6, "method": "APPROXIMATE"}),
    ],
)
def test_rounding_threshold_bits_normalisation(given_value: object, expected: object) -> None:
    got = normalize_rounding_threshold_bits(given_value)
    if expected is None:
        assert got is None
    else:
        assert isinstance(expected, dict)
        assert got == {"n_bits": expected["n_bits"], "method": Exactness[expected["method"]]}


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"n_bits": 4, "mode": "EXACT"}, KeyError, "mode"),
        ({"n_bits": "auto"}, NotImplementedError, "auto"),
        ("auto", ValueError, "auto"),
        ({"n_bits": 4.0}, ValueError, "int"),
        ({"n_bits": 4, "method": "NEAREST"}, ValueError, "NEAREST"),
        (1, ValueError, r"\[2, 8\]"),
        (9, ValueError, r"\[2, 8\]"),
        ({"n_bits": 9, "method": "EXACT"}, ValueError, r"\[2, 8\]"),
        (4.5, ValueError, "float"),
        (True, ValueError, "bool"),
    ],
)
def test_rounding_threshold_bits_errors(bad: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        normalize_rounding_threshold_bits(bad)


def test_rounding_errors_are_fhequant_subclasses_and_stored_on_the_op() -> None:
    with pytest.raises(InvalidOptionKeyError):
        normalize_rounding_threshold_bits({"bits": 3})
    with pytest.raises(UnsupportedOptionError):
        normalize_rounding_threshold_bits({"n_bits": "auto"})
    w = qa_float(np.ones((2, 2), np.float32), 4)
    op = QuantizedGemm(5, "g", constant_inputs={1: w}, rounding_threshold_bits=3)
    assert op.rounding_threshold_bits == {"n_bits": 3, "method": Exactness.EXACT}
    assert "rounding_threshold_bits" not in op.attrs
    with pytest.raises(ValueError, match="'g'"):
        QuantizedGemm(5, "g", constant_inputs={1: w}, rounding_threshold_bits=10)
    op.rounding_threshold_bits = 4  # e.g. the power-of-two pass: normalised on assignment
    assert op.rounding_threshold_bits == {"n_bits": 4, "method": Exactness.EXACT}
    assert "rounding_threshold_bits" in op.dump_dict()


# --- bit widths and cnp_round --------------------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "bits"),
    [(0, 0, 1), (0, 1, 1), (0, 7, 3), (0, 8, 4), (-1, 0, 1), (-4, 3, 3), (-5, 3, 4), (-4, 4, 4)],
)
def test_compute_bits_precision(lo: int, hi: int, bits: int) -> None:
    assert compute_bits_precision(lo, hi) == bits


@given(st.integers(-(2**40), 2**40), st.integers(0, 2**40))
def test_compute_bits_precision_matches_log2_formula(lo: int, span: int) -> None:
    hi = lo + span

    def width(v: int) -> int:
        if v == 0:
            return 1
        if v < 0:
            return int(np.ceil(np.log2(abs(v)))) + 1
        return int(np.ceil(np.log2(v + 1))) + (1 if lo < 0 else 0)

    assert compute_bits_precision(lo, hi) == max(width(lo), width(hi))


@settings(max_examples=50)
@given(st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=30), st.integers(1, 12))
def test_round_bit_pattern_executors_round_ties_up(values: list[int], k: int) -> None:
    x = np.asarray(values, dtype=np.int64)
    expected = np.floor((x + 2 ** (k - 1)) / 2**k).astype(np.int64) * 2**k
    np.testing.assert_array_equal(CLEAR.round_bit_pattern(x, k), expected)
    np.testing.assert_array_equal(TRACING.round_bit_pattern(x, k), expected)


def _gemm_with_rounding(bits: int) -> QuantizedGemm:
    w = qa_int([[3, -2], [1, 4]], 0.1, 0, n_bits=4, signed=True)
    op = QuantizedGemm(
        5,
        "g",
        constant_inputs={1: w},
        input_quant_opts=QuantizationOptions(8, is_signed=False),
        rounding_threshold_bits=bits,
    )
    op.calibrate(np.array([[1.0, 2.0]], dtype=np.float32))
    return op


def test_cnp_round_calibration_takes_the_max_over_batches() -> None:
    op = _gemm_with_rounding(3)
    # acc = x @ w with z_w = 0: [[3*a + b, -2*a + 4*b]]
    small = qa_int([[2, 0]], 0.1, 0)  # acc [6, -4] -> signed range needs 4 bits -> 1 lsb
    op.q_impl(small, calibrate_rounding=True)
    assert op.lsbs_to_remove == {"matmul": 1}
    big = qa_int([[100, 100]], 0.1, 0)  # acc [400, 200] -> 9 bits -> 6 lsbs
    op.q_impl(big, calibrate_rounding=True)
    assert op.lsbs_to_remove == {"matmul": 6}
    op.q_impl(small, calibrate_rounding=True)  # never decreases
    assert op.lsbs_to_remove == {"matmul": 6}


def test_cnp_round_applies_the_rounding_at_inference() -> None:
    op = _gemm_with_rounding(3)
    op.lsbs_to_remove["matmul"] = 2
    op.debug_value_tracker = {}
    op.q_impl(qa_int([[3, 3]], 0.1, 0))
    # acc [12, 6] -> round 2 lsbs, ties up -> [12, 8]
    np.testing.assert_array_equal(op.debug_value_tracker["g"]["accumulator"], [[12, 8]])


def test_no_rounding_without_threshold() -> None:
    op = _gemm_with_rounding(3)
    op.rounding_threshold_bits = None
    op.q_impl(qa_int([[100, 100]], 0.1, 0), calibrate_rounding=True)
    assert op.lsbs_to_remove == {}


# --- inputs and constants ------------------------------------------------------------------


def test_constants_by_index_name_or_digit_string() -> None:
    w = qa_float(np.eye(2, dtype=np.float32), 4)
    for key in (1, "1", "B"):
        op = QuantizedGemm(5, "g", constant_inputs={key: w})
        assert op.constant_inputs == {1: w}
    with pytest.raises(QuantizedOpError, match=r"'g'.*unknown constant input 'W'"):
        QuantizedGemm(5, "g", constant_inputs={"W": w})
    with pytest.raises(QuantizedOpError, match="out of range"):
        QuantizedGemm(5, "g", constant_inputs={5: w})


def test_defaults_and_fusable_ops_reset_qat() -> None:
    op = QuantizedRelu(6, "r", input_quant_opts=QuantizationOptions(4, is_signed=True, is_qat=True))
    assert op.int_input_names == {"0"}
    assert op.n_bits == 6 and op.input_quant_opts.is_qat is False
    assert op.output_quant_opts.is_qat is False
    default = QuantizedRelu(6, "r2")
    assert default.input_quant_opts == QuantizationOptions(6, is_signed=True)
    mixing = QuantizedGemm(
        6,
        "g",
        constant_inputs={1: qa_float(np.eye(2, dtype=np.float32), 4)},
        input_quant_opts=QuantizationOptions(4, is_signed=True, is_qat=True),
    )
    assert mixing.input_quant_opts.is_qat is True


def test_wrong_input_count_names_the_op_and_counts() -> None:
    op = QuantizedRelu(5, "relu_1")
    with pytest.raises(QuantizedOpError, match=r"'relu_1'.*expects 1 inputs"):
        op.calibrate(np.ones(2), np.ones(2))
    add = QuantizedAdd(5, "add_1", int_input_names={"a", "b"})
    with pytest.raises(QuantizedOpError, match=r"'add_1'.*expects 2"):
        add.calibrate(np.ones(2))


def test_calibrate_sets_unsigned_model_output_params_and_q_impl_needs_them() -> None:
    op = QuantizedRelu(3, "r", input_quant_opts=QuantizationOptions(3, is_signed=True))
    x = qa_float(np.array([-1.0, 0.5, 2.0], dtype=np.float32), 3, signed=True)
    with pytest.raises(NotCalibratedError, match="'r'"):
        op.q_impl(x)
    raw = op.calibrate(x)
    np.testing.assert_array_equal(raw, [0.0, 0.5, 2.0])
    assert op.output_quant_params is not None
    assert op.output_quant_params.offset == 0
    assert op.output_quant_params.scale == np.float64(np.float32(2.0)) / 7
    out = op.q_impl(x)
    # univariate ops use the unquantized floats of their input (.values)
    np.testing.assert_array_equal(out.values, [0.0, 0.5, 2.0])
    np.testing.assert_array_equal(out.qvalues, [0, 2, 7])


# --- the re-quantization rule --------------------------------------------------------------


def _reshape(opts: QuantizationOptions) -> QuantizedReshape:
    return QuantizedReshape(
        5, "reshape", constant_inputs={1: np.array([-1])}, input_quant_opts=opts
    )


def test_requantization_passes_integers_through_when_options_match() -> None:
    x = qa_float(np.linspace(-1, 1, 6, dtype=np.float32), 5, signed=True)
    op = _reshape(QuantizationOptions(5, is_signed=True))
    out = op.q_impl(x)
    np.testing.assert_array_equal(out.qvalues, x.qvalues)
    assert out.quantizer.scale == x.quantizer.scale


def test_requantization_recomputes_params_from_producer_stats() -> None:
    x = qa_float(np.linspace(-1, 1, 6, dtype=np.float32), 6, signed=False)
    op = _reshape(QuantizationOptions(3, is_signed=True))
    out = op.q_impl(x)
    expected = QuantizedArray(
        3, x.values, options=QuantizationOptions(3, is_signed=True), stats=x.quantizer.quant_stats
    )
    np.testing.assert_array_equal(out.qvalues, expected.qvalues)
    assert out.quantizer.scale == expected.quantizer.scale
    assert out.quantizer.n_bits == 3


def test_requantization_of_an_array_zero_point_and_precomputed_qat() -> None:
    opts = QuantizationOptions(4, is_signed=True)
    acc = qa_int([[10, 20], [30, 40]], 0.01, 0, n_bits=4, signed=True)
    acc.quantizer.zero_point = np.array([[1.5, -2.0]])
    acc.quantizer.compute_quantization_stats(acc.values)
    out = _reshape(opts).q_impl(acc)
    assert np.ndim(out.quantizer.zero_point) == 0  # re-quantized with the consumer's options
    qat = qa_int([1, 2, 3], 0.5, 0, n_bits=2, signed=False)
    qat.quantizer.is_precomputed_qat = True
    passed = _reshape(opts).q_impl(qat)
    np.testing.assert_array_equal(passed.qvalues, [1, 2, 3])
    assert passed.quantizer.n_bits == 2


def test_qat_requantization_is_recorded_in_the_error_tracker() -> None:
    opts = QuantizationOptions(4, is_signed=True, is_qat=True)
    op = _reshape(opts)
    op.error_tracker = []
    # Values off any uniform 4-bit grid: not quantized by the model, so recorded.
    x = qa_float(np.array([-1, -0.3, 0.05, 0.4, 0.77, 1], dtype=np.float32), 6, signed=False)
    op.q_impl(x)
    assert op.error_tracker == [0]
    # Values already on a uniform grid (check_is_uniform_quantized) are not recorded.
    op.error_tracker = []
    op.q_impl(qa_float(np.linspace(-1, 1, 6, dtype=np.float32), 6, signed=False))
    assert op.error_tracker == []
