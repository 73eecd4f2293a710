"""Bad models and bad inputs raise typed, named errors (never a crash)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from fhequant.errors import (
    FhequantError,
    GraphInputError,
    OnnxImportError,
    ShapeError,
    UnsupportedOpError,
)
from fhequant.onnx import NumpyModule
from onnx_testing import make_model

RNG = np.random.default_rng(5)


def relu_model(shape: list[int]) -> bytes:
    x = np.zeros(shape, np.float32)
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        {"x": x},
        ["y"],
        out_types={"y": (TensorProto.FLOAT, shape)},
    )
    return model.SerializeToString()


def two_input_module() -> NumpyModule:
    model = make_model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        {"a": np.zeros((1, 3), np.float32), "b": np.zeros((1, 3), np.float32)},
        ["y"],
        out_types={"y": (TensorProto.FLOAT, [1, 3])},
    )
    return NumpyModule(model)


def test_unsupported_ops_are_all_listed() -> None:
    x = np.zeros((1, 3, 4, 4), np.float32)
    nodes = [
        helper.make_node("LRN", ["x"], ["a"], size=3, name="lrn1"),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("LRN", ["b"], ["c"], size=3, name="lrn2"),
        helper.make_node("Hardmax", ["c"], ["d"], name="hm"),
        helper.make_node("Frob", ["d"], ["y"], domain="com.example", name="custom"),
    ]
    model = make_model(
        nodes,
        {"x": x},
        ["y"],
        out_types={"y": (TensorProto.FLOAT, [1, 3, 4, 4])},
        extra_opsets=(("com.example", 1),),
    )
    with pytest.raises(UnsupportedOpError) as info:
        NumpyModule(model)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "LRN (nodes 'lrn1', 'lrn2')" in msg
    assert "Hardmax (nodes 'hm')" in msg
    assert "com.example.Frob (nodes 'custom')" in msg
    assert "Relu (nodes" not in msg
    # issue 15: no dump of every supported name, a pointer to the list instead
    assert "fhequant.onnx.SUPPORTED_OPS" in msg and "'Relu'" not in msg
    assert len(msg) < 400


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_raise_import_error(seed: int) -> None:
    data = np.random.default_rng(seed).bytes(200 + 37 * seed)
    with pytest.raises(OnnxImportError):
        NumpyModule(data)


@pytest.mark.parametrize("cut", [0, 1, 10, 30, -20, -3])
def test_truncated_bytes_raise_import_error(cut: int) -> None:
    data = relu_model([2, 3])
    with pytest.raises(OnnxImportError):
        NumpyModule(data[:cut])


def test_bad_sources() -> None:
    with pytest.raises(OnnxImportError, match="does not exist"):
        NumpyModule("/nonexistent/model.onnx")
    with pytest.raises(OnnxImportError, match="cannot read an ONNX model from a int"):
        NumpyModule(12)


def test_model_from_path_and_bytes(tmp_path: object) -> None:
    import pathlib

    data = relu_model([2, 3])
    path = pathlib.Path(str(tmp_path)) / "relu.onnx"
    path.write_bytes(data)
    x = RNG.normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(NumpyModule(path)(x), np.maximum(x, 0))
    np.testing.assert_array_equal(NumpyModule(str(path))(x), np.maximum(x, 0))
    np.testing.assert_array_equal(NumpyModule(data)(x), np.maximum(x, 0))


def test_wrong_number_of_inputs() -> None:
    module = two_input_module()
    a = np.zeros((4, 3), np.float32)
    with pytest.raises(GraphInputError, match=r"missing graph input\(s\) \['b'\]"):
        module(a)
    with pytest.raises(GraphInputError, match=r"3 inputs given, the graph takes 2: \['a', 'b'\]"):
        module(a, a, a)
    with pytest.raises(GraphInputError, match=r"unknown input name\(s\) \['c'\]"):
        module(a, c=a)
    with pytest.raises(GraphInputError, match=r"\['a'\] given both by position and by name"):
        module(a, a=a)
    np.testing.assert_array_equal(module(a, b=a + 1), a + 1)


def test_wrong_rank_and_shape() -> None:
    module = two_input_module()
    with pytest.raises(GraphInputError, match=r"input 'a' has rank 3 .* expects rank 2"):
        module(np.zeros((4, 3, 1), np.float32), np.zeros((4, 3), np.float32))
    with pytest.raises(GraphInputError, match=r"input 'b' has shape \(4, 5\).*axes \[1\]"):
        module(np.zeros((4, 3), np.float32), np.zeros((4, 5), np.float32))


def test_runtime_failure_names_the_node() -> None:
    x = np.zeros((1, 6), np.float32)
    model = make_model(
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="flat")],
        {"x": x},
        ["y"],
        {"s": np.array([1, 2, 3], np.int64)},
        out_types={"y": (TensorProto.FLOAT, [1, 2, 3])},
    )
    module = NumpyModule(model)
    assert module(x).shape == (1, 2, 3)
    with pytest.raises(ShapeError, match=r"node 'flat' \(Reshape\) failed on inputs of shapes"):
        module(np.zeros((4, 6), np.float32))


def test_bad_attribute_is_named() -> None:
    model = make_model(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transC=1)],
        {"x": np.zeros((1, 2), np.float32)},
        ["y"],
        {"w": np.zeros((2, 2), np.float32)},
        out_types={"y": (TensorProto.FLOAT, [1, 2])},
    )
    with pytest.raises(FhequantError, match=r"'fc'|transC"):
        NumpyModule(model)


def test_mutated_models_fail_with_typed_errors_only() -> None:
    """Byte flips in a small CNN model: each load/forward succeeds or raises FhequantError."""
    import torch
    from torch import nn

    from fhequant.torch import export_to_onnx

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 3),
        nn.Sigmoid(),
    ).eval()
    x = RNG.normal(size=(3, 1, 4, 4)).astype(np.float32)
    data = export_to_onnx(model, x).SerializeToString()
    rng = np.random.default_rng(11)
    outcomes = {"ok": 0, "typed": 0}
    for _ in range(300):
        mutated = bytearray(data)
        for i in rng.integers(len(mutated), size=rng.integers(1, 4)):
            mutated[i] = rng.integers(256)
        try:
            NumpyModule(bytes(mutated))(x)
            outcomes["ok"] += 1
        except FhequantError:
            outcomes["typed"] += 1
    assert outcomes["typed"] > 0 and outcomes["ok"] > 0
