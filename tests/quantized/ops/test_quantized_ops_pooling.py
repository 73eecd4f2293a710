"""Pools, Pad, Unfold and ReduceSum against float computations on dequantized inputs."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from fhequant.errors import QuantizedOpError
from fhequant.quantization import QuantizationOptions
from fhequant.quantized import (
    QuantizedAvgPool,
    QuantizedMaxPool,
    QuantizedPad,
    QuantizedReduceSum,
    QuantizedUnfold,
)
from quantized_ops_helpers import qa_float

RNG = np.random.default_rng(11)
X = RNG.normal(0.8, 1.0, size=(2, 3, 5, 7)).astype(np.float32)
OPTS = QuantizationOptions(4)


def _q_x() -> object:
    q = qa_float(X, 4)
    assert q.quantizer.zero_point != 0
    return q


def test_avgpool_is_mean_of_zero_padded_dequantized_windows() -> None:
    attrs = {
        "kernel_shape": [2, 3],
        "strides": [2, 2],
        "pads": [1, 0, 0, 1],
        "count_include_pad": 1,
    }
    op = QuantizedAvgPool(6, "avg", input_quant_opts=OPTS, **attrs)
    op.calibrate(X)
    q_x = _q_x()
    out = op.q_impl(q_x)
    xp = np.pad(q_x.dequant(), ((0, 0), (0, 0), (1, 0), (0, 1)))
    win = sliding_window_view(xp, (2, 3), axis=(2, 3))[:, :, ::2, ::2]
    np.testing.assert_allclose(out.values, win.mean(axis=(-2, -1)), atol=1e-12)


def test_avgpool_ceil_mode_divides_by_the_valid_cells() -> None:
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2], "count_include_pad": 1, "ceil_mode": 1}
    op = QuantizedAvgPool(6, "avg", input_quant_opts=OPTS, **attrs)
    raw = op.calibrate(X)
    q_x = _q_x()
    out = op.q_impl(q_x)
    assert out.values.shape == raw.shape == (2, 3, 3, 4)
    r = q_x.dequant()
    np.testing.assert_allclose(out.values[:, :, 2, 3], r[:, :, 4, 6], atol=1e-12)
    np.testing.assert_allclose(out.values[:, :, 2, 0], r[:, :, 4, 0:2].mean(axis=-1), atol=1e-12)


def test_avgpool_rounding_is_calibrated_and_applied() -> None:
    attrs = {"kernel_shape": [2, 2], "strides": [1, 1], "count_include_pad": 1}
    op = QuantizedAvgPool(6, "avg", input_quant_opts=OPTS, rounding_threshold_bits=3, **attrs)
    op.calibrate(X)
    op.produces_graph_output = True  # AveragePool rounds even at a graph output
    op.q_impl(_q_x(), calibrate_rounding=True)
    assert op.lsbs_to_remove == {"single_rounding_op": 3}  # sums of 4 4-bit values: 6 bits


def test_maxpool_is_max_of_zp_padded_windows() -> None:
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    op = QuantizedMaxPool(6, "max", input_quant_opts=OPTS, **attrs)
    op.calibrate(X)
    assert not op.can_fuse()
    q_x = _q_x()
    out = op.q_impl(q_x)
    xp = np.pad(q_x.dequant(), ((0, 0), (0, 0), (1, 1), (1, 1)))  # zp pads dequantize to 0
    win = sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    np.testing.assert_allclose(out.values, win.max(axis=(-2, -1)), atol=1e-12)


def test_pad_keeps_the_quantizer_and_pads_with_the_zero_point() -> None:
    op = QuantizedPad(
        6, "pad", constant_inputs={1: np.array([0, 0, 1, 2, 0, 0, 0, 1])}, input_quant_opts=OPTS
    )
    op.calibrate(X)
    q_x = qa_float(X, 4)
    out = op.q_impl(q_x)
    assert out.qvalues.shape == (2, 3, 6, 10)
    assert out.quantizer.scale == q_x.quantizer.scale
    assert np.all(out.qvalues[:, :, 0, :] == q_x.quantizer.zero_point)
    np.testing.assert_array_equal(out.qvalues[:, :, 1:, 2:9], q_x.qvalues)
    np.testing.assert_allclose(out.dequant()[:, :, 0, :], 0.0)


@pytest.mark.parametrize(
    ("consts", "attrs", "match"),
    [
        ({1: np.array([1, 0, 0, 0, 0, 0, 0, 0])}, {}, "pads"),
        ({1: np.array([0, 0, 1, 1, 0, 0])}, {}, "pads"),
        ({1: np.array([1, 1, 1, 1]), 2: np.float32(1.0)}, {}, "pad value"),
        ({1: np.array([1, 1, 1, 1])}, {"mode": "reflect"}, "mode"),
    ],
)
def test_pad_errors(consts: dict, attrs: dict, match: str) -> None:
    with pytest.raises(QuantizedOpError, match=match):
        QuantizedPad(6, "pad", constant_inputs=consts, **attrs)


def test_unfold_matches_float_unfold_of_dequantized_input() -> None:
    attrs = {"kernel_shape": [2, 3], "pads": [1, 0, 0, 1], "strides": [1, 2]}
    op = QuantizedUnfold(6, "unfold", input_quant_opts=OPTS, **attrs)
    raw = op.calibrate(X)
    q_x = _q_x()
    out = op.q_impl(q_x)
    xp = np.pad(q_x.dequant(), ((0, 0), (0, 0), (1, 0), (0, 1)))
    win = sliding_window_view(xp, (2, 3), axis=(2, 3))[:, :, ::1, ::2]
    n, c, oh, ow = win.shape[:4]
    expected = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * 6, oh * ow)
    assert raw.shape == expected.shape
    np.testing.assert_allclose(out.values, expected, atol=1e-12)


def test_reduce_sum_graph_output_and_hidden() -> None:
    op = QuantizedReduceSum(6, "sum", constant_inputs={1: np.array([2, 3])}, input_quant_opts=OPTS)
    op.calibrate(X)
    q_x = _q_x()
    op.produces_graph_output = True
    out = op.q_impl(q_x)
    z = q_x.quantizer.zero_point
    assert out.quantizer.zero_point == 35 * z and out.quantizer.scale == q_x.quantizer.scale
    np.testing.assert_allclose(out.dequant(), q_x.dequant().sum(axis=(2, 3), keepdims=True))
    op.produces_graph_output = False
    hidden = op.q_impl(q_x)
    np.testing.assert_allclose(hidden.values, q_x.dequant().sum(axis=(2, 3), keepdims=True))


def test_pool_and_reduce_errors() -> None:
    # issue 13 made count_include_pad 0, MaxPool ceil_mode 1 and dilations valid: the
    # refusals left are the values ONNX does not define
    with pytest.raises(QuantizedOpError, match="count_include_pad"):
        QuantizedAvgPool(5, "a", kernel_shape=[2, 2], count_include_pad=2)
    with pytest.raises(QuantizedOpError, match="dilations"):
        QuantizedAvgPool(5, "a", kernel_shape=[2, 2], dilations=[2, 2])
    with pytest.raises(QuantizedOpError, match="auto_pad"):
        QuantizedAvgPool(5, "a", kernel_shape=[2, 2], count_include_pad=1, auto_pad="SAME_UPPER")
    with pytest.raises(QuantizedOpError, match="ceil_mode"):
        QuantizedMaxPool(5, "m", kernel_shape=[2, 2], ceil_mode=2)
    with pytest.raises(QuantizedOpError, match="dilations"):
        QuantizedMaxPool(5, "m", kernel_shape=[2, 2], dilations=[2, 0])
    with pytest.raises(QuantizedOpError, match="kernel_shape"):
        QuantizedMaxPool(5, "m", kernel_shape=[2, 2, 2])
    with pytest.raises(QuantizedOpError, match=r"'s'.*axis 0"):
        QuantizedReduceSum(5, "s", constant_inputs={1: np.array([0, 1])})
    op = QuantizedReduceSum(5, "s2", constant_inputs={1: np.array([-4])})
    with pytest.raises(QuantizedOpError, match="axis 0"):
        op.calibrate(X)
