"""Softmax and LayerNormalization from the integers of their input (docs/contract.md §3.9).

Softmax is within two output steps (a third of one on average) of the float softmax of the
dequantized input, on any non-batch axis; LayerNormalization follows the float one within a
few steps of its internal quantizers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fhequant.errors import QuantizedOpError
from fhequant.onnx.ops.activations import softmax
from fhequant.onnx.ops.linear import layer_normalization
from fhequant.quantization import QuantizationOptions, QuantizedArray
from fhequant.quantized import QuantizedLayerNormalization, QuantizedSoftmax


def _softmax_op(n_bits: int, axis: int) -> QuantizedSoftmax:
    return QuantizedSoftmax(
        n_bits,
        "softmax",
        int_input_names={"x"},
        input_quant_opts=QuantizationOptions(n_bits, is_signed=True),
        axis=axis,
    )


@pytest.mark.parametrize("n_bits", [4, 6, 8])
@pytest.mark.parametrize("axis", [-1, 1, 2])
def test_softmax_integers_follow_the_float_softmax(n_bits: int, axis: int) -> None:
    x = np.random.default_rng(n_bits).normal(0, 2, size=(32, 3, 4, 5)).astype(np.float32)
    op = _softmax_op(n_bits, axis)
    op.calibrate(x)
    q_x = QuantizedArray(n_bits, x, is_signed=True)
    out = op.q_impl(q_x).dequant()
    expected = softmax(q_x.dequant(), axis=axis)
    step = float(op.output_quant_params.scale)
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= 2.0 * step
    assert np.abs(out - expected).mean() <= 0.4 * step
    np.testing.assert_array_equal(out.argmax(axis), expected.argmax(axis))


def test_softmax_over_the_batch_axis_is_refused() -> None:
    with pytest.raises(QuantizedOpError, match="batch axis"):
        _softmax_op(4, 0)
    op = _softmax_op(4, -3)
    x = np.random.default_rng(0).normal(size=(5, 2, 3)).astype(np.float32)
    with pytest.raises(QuantizedOpError, match="batch axis"):
        op.q_impl(QuantizedArray(4, x, is_signed=True))


def _layernorm_op(n_bits: int, axis: int, scale: np.ndarray, bias: np.ndarray) -> Any:
    return QuantizedLayerNormalization(
        n_bits,
        "layernorm",
        int_input_names={"x"},
        constant_inputs={1: scale, 2: bias},
        input_quant_opts=QuantizationOptions(n_bits, is_signed=True),
        axis=axis,
    )


@pytest.mark.parametrize("n_bits", [4, 6, 8])
@pytest.mark.parametrize("axis", [-1, 2])
def test_layernorm_integers_follow_the_float_layernorm(n_bits: int, axis: int) -> None:
    rng = np.random.default_rng(n_bits)
    x = (rng.normal(0, 2, size=(32, 3, 4, 6)) + rng.normal(0, 3, size=(32, 3, 1, 1))).astype(
        np.float32
    )
    norm_shape = x.shape[axis:]
    scale = rng.uniform(0.5, 2.0, size=norm_shape).astype(np.float32)
    bias = rng.normal(0, 0.5, size=norm_shape).astype(np.float32)
    op = _layernorm_op(n_bits, axis, scale, bias)
    op.calibrate(x)
    q_x = QuantizedArray(n_bits, x, is_signed=True)
    out = op.q_impl(q_x).dequant()
    expected = layer_normalization(q_x.dequant(), scale, bias, axis=axis)[0]
    spread = float(expected.max() - expected.min())
    assert out.shape == expected.shape
    # the centered values and the inverse std are quantized at n_bits too: a few steps
    assert np.abs(out - expected).mean() <= 2.0 * spread / 2**n_bits
    assert np.corrcoef(out.ravel(), expected.ravel())[0, 1] > 1 - 4.0 ** (2 - n_bits)


def test_layernorm_over_the_batch_axis_is_refused() -> None:
    one = np.ones(3, np.float32)
    with pytest.raises(QuantizedOpError, match="non-batch axis"):
        _layernorm_op(4, 0, one, one)
    op = _layernorm_op(4, -3, one, one)
    with pytest.raises(QuantizedOpError, match="batch axis"):
        op.calibrate(np.ones((2, 3, 3), np.float32))
