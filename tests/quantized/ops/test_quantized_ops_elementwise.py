"""Add / Sub / Mul / Div on two encrypted tensors, against exact integer formulas."""

from __future__ import annotations

import numpy as np
import pytest

from fhequant.errors import QuantizedOpError
from fhequant.quantization import QuantizationOptions
from fhequant.quantized import (
    QuantizedAdd,
    QuantizedDiv,
    QuantizedMax,
    QuantizedMul,
    QuantizedOr,
    QuantizedPow,
    QuantizedSub,
)
from quantized_ops_helpers import qa_float, qa_int

RNG = np.random.default_rng(7)
OPTS = QuantizationOptions(4, is_signed=False)


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    a = RNG.normal(size=(5, 4)).astype(np.float32)
    b = RNG.normal(0.5, 2.0, size=(5, 4)).astype(np.float32)
    return a, b


def _enc(cls: type, graph_output: bool, second: np.ndarray | None = None) -> tuple:
    a, b = _inputs()
    b = b if second is None else second
    op = cls(5, "op", int_input_names={"a", "b"}, input_quant_opts=OPTS)
    op.calibrate(a, b)
    op.produces_graph_output = graph_output
    q_a = qa_int(RNG.integers(0, 16, (5, 4)), 0.07, 5, n_bits=4)
    q_b = qa_int(RNG.integers(0, 16, (5, 4)), 0.19, 11, n_bits=4)
    return op, q_a, q_b


@pytest.mark.parametrize(("cls", "sign"), [(QuantizedAdd, 1), (QuantizedSub, -1)])
def test_add_sub_graph_output_rescales_to_the_smaller_scale(cls: type, sign: int) -> None:
    op, q_a, q_b = _enc(cls, graph_output=True)
    out = op.q_impl(q_a, q_b)
    s = 0.07
    t_a = np.rint(0.07 * (q_a.qvalues - 5.0) / s).astype(np.int64)
    t_b = np.rint(0.19 * (q_b.qvalues - 11.0) / s).astype(np.int64)
    np.testing.assert_array_equal(out.qvalues, t_a + sign * t_b)
    assert out.quantizer.scale == s and out.quantizer.zero_point == 0
    # no clipping: the sum can leave any n-bit range
    assert out.qvalues.max() - out.qvalues.min() > 15


@pytest.mark.parametrize(("cls", "sign"), [(QuantizedAdd, 1), (QuantizedSub, -1)])
def test_add_sub_hidden_uses_the_calibrated_output_scale(cls: type, sign: int) -> None:
    op, q_a, q_b = _enc(cls, graph_output=False)
    out = op.q_impl(q_a, q_b)
    s = op.output_quant_params.scale
    t_a = np.rint(0.07 * (q_a.qvalues - 5.0) / s)
    t_b = np.rint(0.19 * (q_b.qvalues - 11.0) / s)
    v = s * (t_a + sign * t_b)
    np.testing.assert_allclose(out.values, v)
    z = op.output_quant_params.zero_point
    np.testing.assert_array_equal(out.qvalues, np.clip(np.rint(v / s + z), 0, 31))


def test_mul_graph_output_zero_point_is_minus_z0_z1() -> None:
    op, q_a, q_b = _enc(QuantizedMul, graph_output=True)
    out = op.q_impl(q_a, q_b)
    exact = (q_a.qvalues - 5) * (q_b.qvalues - 11)
    # [FIX c]: (q0 - z0)(q1 - z1) = P + z0 z1, i.e. zp = -z0 z1
    assert out.quantizer.zero_point == -55
    np.testing.assert_array_equal(out.qvalues - out.quantizer.zero_point, exact)
    np.testing.assert_allclose(out.dequant(), 0.07 * 0.19 * exact)


def test_mul_hidden_rounds_inputs_and_product() -> None:
    a, b = _inputs()
    op = QuantizedMul(
        5, "mul", int_input_names={"a", "b"}, input_quant_opts=OPTS, rounding_threshold_bits=3
    )
    op.calibrate(a, b)
    q_a, q_b = qa_float(a, 4), qa_float(b, 4)
    out = op.q_impl(q_a, q_b, calibrate_rounding=True)
    assert set(op.lsbs_to_remove) == {
        "input0_q_values_copy",
        "input1_q_values_copy",
        "product_q_values",
    }
    assert op.lsbs_to_remove["input0_q_values_copy"] == 1  # 4-bit unsigned -> 3 bits
    exact = op.output_quant_params.scale
    assert out.values.dtype == np.float64 and exact > 0


def test_div_encrypted_uses_the_quantized_inverse() -> None:
    a, b = _inputs()
    b = np.sign(b) * (np.abs(b) + np.float32(0.5))
    op = QuantizedDiv(5, "div", int_input_names={"a", "b"}, input_quant_opts=OPTS)
    op.calibrate(a, b)
    assert op.min_non_zero_value == b.flat[np.argmin(np.abs(b))]
    assert op.divider_quantizer.n_bits == 5
    op.produces_graph_output = True
    q_a, q_b = qa_float(a, 4), qa_float(b, 4)
    out = op.q_impl(q_a, q_b)
    dq = op.divider_quantizer
    q_inv = dq.quant(1 / q_b.dequant())
    exact = (q_a.qvalues - q_a.quantizer.zero_point) * (q_inv - dq.zero_point)
    np.testing.assert_array_equal(out.qvalues - out.quantizer.zero_point, exact)
    np.testing.assert_allclose(
        out.dequant(), q_a.dequant() * dq.dequant(q_inv), rtol=1e-9, atol=1e-12
    )


def test_div_by_zero_everywhere_in_calibration_is_an_error() -> None:
    op = QuantizedDiv(5, "div", int_input_names={"a", "b"}, input_quant_opts=OPTS)
    with pytest.raises(QuantizedOpError, match=r"'div'.*divisor is 0 in all"):
        op.calibrate(np.ones(3, np.float32), np.zeros(3, np.float32))


def test_div_by_a_divisor_quantized_to_zero_uses_the_smallest_non_zero_one() -> None:
    """A zero divisor in the calibration data (a positive sqrt(var + eps) that quantized to 0)
    is replaced by the smallest non-zero one, in calibration as at inference."""
    op = QuantizedDiv(5, "div", int_input_names={"a", "b"}, input_quant_opts=OPTS)
    a = np.array([1.0, 2.0, -1.0, 0.5], np.float32)
    b = np.array([1.0, 0.0, 2.0, 0.25], np.float32)
    op.calibrate(a, b)
    assert op.min_non_zero_value == np.float32(0.25)
    assert np.isfinite(op.divider_quantizer.scale)
    assert op.divider_quantizer.quant_stats.rmax == pytest.approx(4.0, rel=1e-6)
    op.produces_graph_output = True
    out = op.q_impl(qa_float(a, 4), qa_float(b, 4)).dequant()
    assert np.all(np.isfinite(out))
    # the row divided by a zero divisor: as if divided by 0.25
    assert out[1] == pytest.approx(2.0 / 0.25, rel=0.1)


def test_fusable_and_constant_paths_are_float_tlus() -> None:
    a, b = _inputs()
    op = QuantizedMul(5, "m", constant_inputs={1: np.float32(1.5)}, input_quant_opts=OPTS)
    op.calibrate(a)
    q_a = qa_float(a, 4)
    out = op.q_impl(q_a)
    np.testing.assert_array_equal(out.values, a * np.float32(1.5))
    fused = QuantizedAdd(5, "add", input_quant_opts=OPTS)  # one encrypted producer
    assert fused.can_fuse()
    fused.calibrate(a, b)
    res = fused.q_impl(q_a, qa_float(b, 4))
    np.testing.assert_array_equal(res.values, a + b)
    raw = QuantizedAdd(5, "add_raw", input_quant_opts=OPTS)
    np.testing.assert_array_equal(raw.q_impl(np.array([1, 2]), np.array([3, 4])), [4, 6])


def test_constructor_errors() -> None:
    with pytest.raises(QuantizedOpError, match=r"'add'.*both inputs are constants"):
        QuantizedAdd(5, "add", constant_inputs={0: np.float32(1), 1: np.float32(2)})
    with pytest.raises(QuantizedOpError, match="'pow'"):
        QuantizedPow(5, "pow", int_input_names={"a", "b"})
    with pytest.raises(QuantizedOpError, match="'or'"):
        QuantizedOr(5, "or", int_input_names={"a", "b"})
    op = QuantizedMax(5, "max", int_input_names={"a", "b"}, constant_inputs={1: np.float32(0)})
    assert not op.can_fuse()
