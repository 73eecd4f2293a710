"""The ops stock vision architectures export (issue 13), against onnxruntime.

Global pools, ReduceMean, ceil-mode / 1-D / dilated / count_include_pad 0 pools and Concat of
differently quantized inputs: the float implementation equals onnxruntime, and the integer
result equals onnxruntime run on the dequantized input, up to the output quantization.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fhequant.quantization import QuantizationOptions, QuantizedArray
from fhequant.quantized import (
    QuantizedConcat,
    QuantizedGlobalAveragePool,
    QuantizedMaxPool,
    QuantizedReduceMean,
    compute_bits_precision,
    quantized_op_class,
)
from onnx_testing import run_ort, single_node

RNG = np.random.default_rng(13)
IMG = RNG.normal(0.0, 1.0, size=(3, 4, 7, 9)).astype(np.float32)
SEQ = RNG.normal(0.0, 1.0, size=(3, 4, 11)).astype(np.float32)
N_BITS = 8

#: (id, op type, input, attributes): one single-node model each
CASES: list[tuple[str, str, np.ndarray, dict[str, Any]]] = [
    ("gap", "GlobalAveragePool", IMG, {}),
    ("gap1d", "GlobalAveragePool", SEQ, {}),
    ("gmp", "GlobalMaxPool", IMG, {}),
    ("gmp1d", "GlobalMaxPool", SEQ, {}),
    ("mean_last", "ReduceMean", IMG, {"axes": [-1]}),
    ("mean_hw", "ReduceMean", IMG, {"axes": [2, 3], "keepdims": 0}),
    ("max_ceil", "MaxPool", IMG, {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("max1d_ceil", "MaxPool", SEQ, {"kernel_shape": [3], "strides": [2], "ceil_mode": 1}),
    ("max_dilated", "MaxPool", IMG, {"kernel_shape": [2, 3], "dilations": [2, 2]}),
    (
        "max_dilated_ceil",
        "MaxPool",
        IMG,
        {"kernel_shape": [2, 2], "dilations": [2, 1], "strides": [2, 2], "ceil_mode": 1},
    ),
    ("avg_default_count", "AveragePool", IMG, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    (
        "avg_ceil_nocount",
        "AveragePool",
        IMG,
        {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1], "ceil_mode": 1},
    ),
    (
        "avg1d",
        "AveragePool",
        SEQ,
        {"kernel_shape": [4], "strides": [3], "pads": [1, 1], "count_include_pad": 1},
    ),
    ("avg_adaptive", "AveragePool", IMG[:, :, :6, :8], {"kernel_shape": [3, 4], "strides": [3, 4]}),
]


def _op(op_type: str, attrs: dict[str, Any], **kwargs: Any) -> Any:
    cls = quantized_op_class(op_type)
    assert cls is not None, op_type
    if cls.is_mixing:
        kwargs.setdefault("rounding_threshold_bits", None)
    opts = QuantizationOptions(N_BITS, is_signed=True)
    return cls(N_BITS, op_type, input_quant_opts=opts, **kwargs, **attrs)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_float_and_integer_results_follow_onnxruntime(case: Any) -> None:
    _, op_type, x, attrs = case
    op = _op(op_type, attrs)
    _, (ref,) = single_node(op_type, {"x": x}, attrs=attrs)
    raw = op.calibrate(x)
    np.testing.assert_allclose(raw, ref, rtol=1e-6, atol=1e-6)

    q_x = QuantizedArray(N_BITS, x, options=QuantizationOptions(N_BITS, is_signed=True))
    out = op.q_impl(q_x)
    (ref_q,) = run_ort(
        single_node(op_type, {"x": x}, attrs=attrs)[0], {"x": q_x.dequant().astype(np.float32)}
    )
    assert out.values.shape == ref_q.shape
    # the integer path is exact up to the rounding of the output quantizer
    np.testing.assert_allclose(out.values, ref_q, atol=0.5 * float(out.quantizer.scale) + 1e-6)


def test_maxpool_ceil_extension_never_wins() -> None:
    x = -np.abs(IMG) - np.float32(0.5)  # all negative: a zero-point fill would win
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}
    op = QuantizedMaxPool(N_BITS, "m", input_quant_opts=QuantizationOptions(N_BITS), **attrs)
    op.calibrate(x)
    q_x = QuantizedArray(N_BITS, x, options=QuantizationOptions(N_BITS))
    out = op.q_impl(q_x)
    r = q_x.dequant()
    assert out.values.shape == (3, 4, 4, 5)
    np.testing.assert_allclose(
        out.values[:, :, 3, 4], r[:, :, 6, 8], atol=0.5 * float(out.quantizer.scale)
    )
    assert np.all(out.values < 0)


def test_global_average_pool_rounds_its_sum() -> None:
    opts = QuantizationOptions(N_BITS)
    op = QuantizedGlobalAveragePool(N_BITS, "g", input_quant_opts=opts, rounding_threshold_bits=6)
    op.calibrate(IMG)
    q_x = QuantizedArray(N_BITS, IMG, options=QuantizationOptions(N_BITS))
    op.q_impl(q_x, calibrate_rounding=True)
    sums = np.asarray(q_x.qvalues).sum(axis=(2, 3))
    width = compute_bits_precision(int(sums.min()), int(sums.max()))
    assert width > 6
    assert op.lsbs_to_remove == {"single_rounding_op": width - 6}
    out = op.q_impl(q_x)
    # rounding the sum of 63 cells moves the mean by at most 2^(lsbs-1)/63 input steps
    tolerance = 2 ** (width - 7) / 63 * float(q_x.quantizer.scale)
    np.testing.assert_allclose(
        out.values[..., 0, 0],
        q_x.dequant().mean(axis=(2, 3)),
        atol=tolerance + 0.5 * float(out.quantizer.scale),
    )


def test_reduce_mean_refuses_the_batch_axis() -> None:
    from fhequant.errors import QuantizedOpError

    with pytest.raises(QuantizedOpError, match="axis 0"):
        QuantizedReduceMean(N_BITS, "r", axes=[0, 1])
    op = QuantizedReduceMean(N_BITS, "r2", constant_inputs={1: np.array([-4])})
    with pytest.raises(QuantizedOpError, match="axis 0"):
        op.calibrate(IMG)


def _branches() -> tuple[np.ndarray, np.ndarray]:
    a = IMG
    b = np.float32(4.0) * RNG.normal(1.0, 1.0, size=(3, 2, 7, 9)).astype(np.float32)
    return a, b


def test_concat_of_differently_quantized_inputs_follows_onnxruntime() -> None:
    a, b = _branches()
    op = QuantizedConcat(N_BITS, "cat", int_input_names={"a", "b"}, axis=1)
    raw = op.calibrate(a, b)
    _, (ref,) = single_node("Concat", {"a": a, "b": b}, attrs={"axis": 1})
    np.testing.assert_array_equal(raw, ref)
    q_a, q_b = (QuantizedArray(N_BITS, v, is_signed=True) for v in (a, b))
    assert q_a.quantizer.scale != q_b.quantizer.scale
    out = op.q_impl(q_a, q_b)
    # one quantizer, calibrated on the union of the inputs
    assert out.quantizer.scale == op.output_quant_params.scale
    assert out.quantizer.zero_point == op.output_quant_params.zero_point
    ints = np.asarray(out.qvalues)
    lo, hi = out.quantizer.clip_bounds()
    assert ints.min() >= lo and ints.max() <= hi
    # each input is quantized once, from its float values (the re-quantization rule,
    # docs/contract.md §2.2), onto the output quantizer
    np.testing.assert_allclose(out.values, ref, atol=0.5 * float(out.quantizer.scale) + 1e-6)


def test_concat_input_on_the_output_quantizer_passes_through() -> None:
    a, b = _branches()
    op = QuantizedConcat(N_BITS, "cat", int_input_names={"a", "b"}, axis=1)
    op.calibrate(a, b)
    on_output = op.make_output_quant_array(b)
    ints_b = np.asarray(on_output.qvalues).copy()
    q_a = QuantizedArray(N_BITS, a, is_signed=True)
    out = op.q_impl(q_a, on_output)
    np.testing.assert_array_equal(np.asarray(out.qvalues)[:, 4:], ints_b)
    expected_a = op.make_output_quant_array(q_a.values).qvalues
    np.testing.assert_array_equal(np.asarray(out.qvalues)[:, :4], expected_a)


def test_concat_of_one_quantizer_keeps_it() -> None:
    a, _ = _branches()
    op = QuantizedConcat(N_BITS, "cat", int_input_names={"a", "b"}, axis=1)
    op.calibrate(a, a)
    q_a = QuantizedArray(N_BITS, a, is_signed=True)
    out = op.q_impl(q_a, q_a)
    np.testing.assert_array_equal(
        np.asarray(out.qvalues), np.concatenate([q_a.qvalues, q_a.qvalues], axis=1)
    )
    assert out.quantizer.scale == q_a.quantizer.scale
