"""GatherND (issue 13): torch's default exporter writes AdaptiveAvgPool2d to an output larger
than its input (vgg11 at 3x32x32: (7, 7) of a 1x1 map) as Transpose, GatherND with constant
indices, Transpose and ReduceMean. The float op is checked against onnxruntime, the quantized
one on a graph of that shape."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fhequant import build_quantized_module
from fhequant.errors import FhequantError
from fhequant.onnx import NumpyModule
from onnx_testing import run_ort

RNG = np.random.default_rng(1331)


def _gather_nd(data: np.ndarray, indices: np.ndarray, batch_dims: int) -> onnx.ModelProto:
    out_shape = list(indices.shape[:-1]) + list(data.shape[batch_dims + indices.shape[-1] :])
    graph = helper.make_graph(
        [helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=batch_dims)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(data.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(indices, "i")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize(
    ("shape", "indices", "batch_dims"),
    [
        ((2, 3), [[0, 0], [1, 2], [-1, -3]], 0),
        ((2, 3, 4), [[1], [0]], 0),
        ((2, 3, 4), [[[0, 1]], [[1, -1]]], 0),
        ((2, 3, 4), [[1], [0]], 1),
        ((2, 3, 4, 5), [[[1, 2]], [[0, 3]]], 1),
        ((2, 3, 4, 5), [[[1], [2], [0]], [[0], [3], [-1]]], 2),
        ((3, 2), np.zeros((4, 1, 4, 1, 2), dtype=np.int64), 0),  # the adaptive-pool form
    ],
)
def test_gather_nd_matches_onnxruntime(
    shape: tuple[int, ...], indices: Any, batch_dims: int
) -> None:
    x = RNG.normal(size=shape).astype(np.float32)
    model = _gather_nd(x, np.asarray(indices, dtype=np.int64), batch_dims)
    got = NumpyModule(model)(x)
    ref = run_ort(model, {"x": x})[0]
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(
    ("indices", "batch_dims"), [([[0, 3]], 0), ([[0], [1]], 2), ([[0], [1], [0]], 1)]
)
def test_gather_nd_bad_indices_are_typed_errors(indices: Any, batch_dims: int) -> None:
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    model = _gather_nd(x, np.asarray(indices, dtype=np.int64), batch_dims)
    with pytest.raises(FhequantError, match="GatherND"):
        NumpyModule(model)(x)


def _adaptive_pool_graph(h: int, w: int, out: int) -> onnx.ModelProto:
    """Conv, Relu, then AdaptiveAvgPool2d((out, out)) of an h x w map as torch writes it."""
    windows = np.zeros((out, 1, out, 1, 2), dtype=np.int64)
    for i in range(out):
        windows[i, 0, :, 0, 0] = i * h // out
        windows[:, 0, i, 0, 1] = i * w // out
    inits = {
        "w": RNG.normal(size=(4, 2, 3, 3)).astype(np.float32),
        "idx": windows,
        "axes": np.array([-3, -1], dtype=np.int64),
        "shape": np.array([-1, 4 * out * out], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[2, 3, 0, 1]),
        helper.make_node("GatherND", ["t", "idx"], ["g"]),
        helper.make_node("Transpose", ["g"], ["u"], perm=[4, 5, 0, 1, 2, 3]),
        helper.make_node("ReduceMean", ["u", "axes"], ["m"], keepdims=0),
        helper.make_node("Reshape", ["m", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4 * out * out])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_adaptive_pool_to_a_larger_map_quantizes() -> None:
    model = _adaptive_pool_graph(2, 2, 3)
    x = RNG.normal(size=(40, 2, 2, 2)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    np.testing.assert_allclose(NumpyModule(model)(x), ref, rtol=1e-5, atol=1e-6)
    module = build_quantized_module(model, x, n_bits=8)
    clear = module.forward(x)
    assert clear.shape == ref.shape
    step = (ref.max() - ref.min()) / 255
    assert np.abs(clear - ref).max() <= 3 * step
    # the streamed calibration sees the same windows (the batch is not an indexed axis)
    streamed = build_quantized_module(model, x, n_bits=8, batch_size=7)
    np.testing.assert_array_equal(streamed.forward(x), clear)
