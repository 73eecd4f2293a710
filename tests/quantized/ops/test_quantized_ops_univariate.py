"""Univariate TLUs, BatchNormalization, comparisons, Identity, shape ops and Brevitas Quant."""

from __future__ import annotations

import numpy as np
import pytest

from fhequant.errors import DTypeError, QuantizedOpError
from fhequant.quantization import QuantizationOptions, QuantizedArray
from fhequant.quantized import (
    QuantizedBatchNormalization,
    QuantizedBrevitasQuant,
    QuantizedConcat,
    QuantizedGreater,
    QuantizedIdentity,
    QuantizedSigmoid,
    QuantizedUnsqueeze,
)
from quantized_op_cases import CASES, OpCase
from quantized_ops_helpers import qa_float, qa_int

RNG = np.random.default_rng(5)


def test_univariate_quantizes_the_float_function_of_unquantized_values() -> None:
    x = RNG.normal(size=(4, 6)).astype(np.float32)
    op = QuantizedSigmoid(4, "sig")
    raw = op.calibrate(x)
    q_x = qa_float(x, 3, signed=True)
    out = op.q_impl(q_x)
    np.testing.assert_array_equal(out.values, raw)  # .values, not the 3-bit dequantization
    s, z = op.output_quant_params.scale, op.output_quant_params.zero_point
    np.testing.assert_array_equal(out.qvalues, np.clip(np.rint(raw / s + z), 0, 15))
    # an input carrying only integers uses their dequantization
    ints = qa_int(q_x.qvalues, q_x.quantizer.scale, q_x.quantizer.zero_point, 3, signed=True)
    np.testing.assert_allclose(op.q_impl(ints).values, 1 / (1 + np.exp(-ints.values)), rtol=1e-15)


def test_batchnorm_training_mode_and_percentile_clip() -> None:
    consts = {i: np.ones(3, np.float32) for i in range(1, 5)}
    with pytest.raises(QuantizedOpError, match=r"'bn'.*training_mode"):
        QuantizedBatchNormalization(5, "bn", constant_inputs=consts, training_mode=1)
    x = RNG.normal(size=(50, 3, 4, 4)).astype(np.float32)
    x[0, 0, 0, 0] = 100.0  # an outlier the per-channel clip removes from the stats
    consts[1] = np.array([1.0, 2.0, 0.5], np.float32)
    op = QuantizedBatchNormalization(5, "bn", constant_inputs=consts)
    raw = op.calibrate(x)
    assert raw.max() > 40
    # numpy clips the float32 output with float64 bounds in float32
    assert op.output_quant_stats.rmax == np.float32(np.percentile(raw, 99.9))
    assert op.output_quant_stats.rmin == np.float32(np.percentile(raw, 0.1))


def test_comparisons_need_a_constant() -> None:
    with pytest.raises(QuantizedOpError, match=r"'gt'.*constant"):
        QuantizedGreater(5, "gt", int_input_names={"a", "b"})
    op = QuantizedGreater(5, "gt", constant_inputs={1: np.float32(0.0)})
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    np.testing.assert_array_equal(op.calibrate(x), [0.0, 0.0, 1.0])


def test_identity_copies_its_input_quantizer() -> None:
    op = QuantizedIdentity(7, "id")
    x = RNG.normal(size=5).astype(np.float32)
    op.calibrate(x)
    q_x = qa_float(x, 3)
    out = op.q_impl(q_x)
    np.testing.assert_array_equal(out.qvalues, q_x.qvalues)
    assert out.quantizer == q_x.quantizer


SHAPE_CASES = [
    c
    for c in CASES
    if c.op_type
    in {"Reshape", "Flatten", "Transpose", "Concat", "Slice", "Gather", "Squeeze", "Expand"}
    | {"Unsqueeze", "Pad"}
    # a Concat of differently quantized inputs re-quantizes them onto its output quantizer
    # (tests/quantized/ops/test_quantized_ops_vision.py)
    and c.case_id != "Concat_mixed"
]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=[c.case_id for c in SHAPE_CASES])
def test_shape_ops_move_integers_like_the_float_op(case: OpCase) -> None:
    op, q_inputs = case.build()
    out = op.q_impl(*q_inputs)
    # moving the integers then dequantizing = the float op on the dequantized input, once
    # re-quantized at the op's input options
    prepared = op._prepare_inputs_with_constants(
        *q_inputs, calibrate=False, quantize_actual_values=True
    )
    floats = [
        p.quantizer.dequant(p.qvalues) if isinstance(p, QuantizedArray) else p for p in prepared
    ]
    np.testing.assert_allclose(out.dequant(), op.call_impl(*floats, **op.attrs), atol=1e-12)
    assert out.qvalues.shape == op.call_impl(*[p for p in floats], **op.attrs).shape


def test_shape_ops_options_and_concat_mismatch() -> None:
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    opts = QuantizationOptions(5, is_signed=True)
    un = QuantizedUnsqueeze(6, "unsq", constant_inputs={1: np.array([0])}, input_quant_opts=opts)
    un.calibrate(x)
    out = un.q_impl(qa_float(x, 5, signed=True))
    assert out.quantizer.quant_options == un.output_quant_opts
    cat = QuantizedConcat(6, "cat", int_input_names={"a", "b"}, input_quant_opts=opts, axis=0)
    cat.calibrate(x, 3 * x)
    # issue 13: inputs of different scales no longer raise; both are brought onto the output
    # quantizer calibrated on their union
    out = cat.q_impl(qa_float(x, 5, signed=True), qa_float(3 * x, 5, signed=True))
    assert out.quantizer.scale == cat.output_quant_params.scale
    assert out.quantizer.zero_point == cat.output_quant_params.zero_point
    np.testing.assert_allclose(
        out.values, np.concatenate([x, 3 * x]), atol=0.5 * float(out.quantizer.scale) + 1e-6
    )


# --- Brevitas Quant ------------------------------------------------------------------------


def _quant(scale: float = 0.25, zp: float = 1.0, bits: float = 3.0, **attrs: object):
    consts = {1: np.float32(scale), 2: np.float32(zp), 3: np.float32(bits)}
    return QuantizedBrevitasQuant(
        8, "quant", constant_inputs=consts, input_quant_opts=QuantizationOptions(8), **attrs
    )


def test_brevitas_quant_clips_then_rounds_and_overrides_params() -> None:
    op = _quant()
    x = np.array([-3.0, -0.3, 0.0, 0.37, 0.5, 0.99, 5.0], np.float32)
    raw = op.calibrate(x)
    # y = x/0.25 + 1, clip to [-4, 3], rint, then (y - 1)·0.25
    y = np.rint(np.clip(x / np.float32(0.25) + 1, -4, 3))
    np.testing.assert_array_equal(raw, (y - 1) * np.float32(0.25))
    params = op.output_quant_params
    assert params.scale == 0.25 and params.zero_point == 1 and params.offset == 4
    assert isinstance(params.zero_point, int)
    opts = op.output_quant_opts
    assert (opts.n_bits, opts.is_qat, opts.is_precomputed_qat, opts.is_signed) == (
        3,
        True,
        True,
        True,
    )
    out = op.q_impl(qa_float(x, 8, signed=True))
    np.testing.assert_array_equal(out.qvalues, y.astype(np.int64))
    again = op.q_impl(out)  # already quantized by this quantizer: returned as is
    assert again is out


def test_brevitas_quant_unsigned_narrow_is_rewritten_to_signed() -> None:
    op = _quant(signed=0, narrow=1)
    assert op.attrs["signed"] == 1 and op.attrs["narrow"] == 0
    unsigned = _quant(zp=0.0, signed=0)
    unsigned.calibrate(np.array([0.0, 1.0], np.float32))
    assert unsigned.output_quant_params.offset == 0


def test_brevitas_quant_errors() -> None:
    with pytest.raises(QuantizedOpError, match=r"'quant'.*zero point \[?0\.5"):
        _quant(zp=0.5)  # [FIX d]: not truncated
    with pytest.raises(QuantizedOpError, match="bit width"):
        _quant(bits=2.5)
    with pytest.raises(QuantizedOpError, match="rounding_mode"):
        _quant(rounding_mode="FLOOR")
    with pytest.raises(DTypeError, match="scale"):
        QuantizedBrevitasQuant(
            8, "quant", constant_inputs={1: np.int64(1), 2: np.float32(0), 3: np.float32(3)}
        )
    with pytest.raises(DTypeError, match="zero_point"):
        QuantizedBrevitasQuant(8, "quant", constant_inputs={1: np.float32(1), 3: np.float32(3)})
