"""Pre-processing (docs/contract.md §5.1): folding, fusions, one-hot Gather, opsets, and the node
walk."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fhequant.errors import OpsetError
from fhequant.onnx import MAX_OPSET, NumpyModule
from onnx_testing import make_model, run_ort, typed

RNG = np.random.default_rng(99)


def f32(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def build(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    outputs: list[str],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 14,
) -> tuple[NumpyModule, list[np.ndarray]]:
    """The NumpyModule of a graph and onnxruntime's outputs on ``inputs``."""
    model = make_model(nodes, inputs, outputs, inits, opset)
    ref = run_ort(model, inputs)
    return NumpyModule(typed(model, ref)), ref


def ops(module: NumpyModule) -> list[str]:
    return [n.op_type for n in module.nodes]


def assert_close(ours: Any, ref: list[np.ndarray]) -> None:
    got = ours if isinstance(ours, tuple) else (ours,)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("a_shape", [(4, 5), (2, 4, 5)])
@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_becomes_gemm(a_shape: tuple[int, ...], bias_first: bool) -> None:
    x = f32(*a_shape)
    add_in = ["c", "m"] if bias_first else ["m", "c"]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Add", add_in, ["y"], name="add"),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    module, ref = build(nodes, {"x": x}, ["z"], {"w": f32(5, 3), "c": f32(3)})
    assert ops(module) == ["Gemm", "Relu"]
    gemm = module.nodes[0]
    assert gemm.inputs == ("x", "w", "c")
    assert gemm.outputs == ("y",)
    assert gemm.attrs["alpha"] == 1.0 and gemm.attrs["beta"] == 1.0
    assert_close(module(x), ref)


@pytest.mark.parametrize("case", ["two_consumers", "graph_output", "variable_operand"])
def test_matmul_add_not_fused(case: str) -> None:
    x = f32(4, 5)
    inputs = {"x": x}
    outputs = ["y"]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"])]
    if case == "variable_operand":
        inputs["c"] = f32(4, 3)
        nodes.append(helper.make_node("Add", ["m", "c"], ["y"]))
    else:
        nodes.append(helper.make_node("Add", ["m", "b"], ["y"]))
        if case == "two_consumers":
            nodes.append(helper.make_node("Relu", ["m"], ["r"]))
        outputs.append("r" if case == "two_consumers" else "m")
    module, ref = build(nodes, inputs, outputs, {"w": f32(5, 3), "b": f32(3)})
    assert "Gemm" not in ops(module)
    assert_close(module(*inputs.values()), ref)


def test_constant_folding_and_unused_initializers() -> None:
    x = f32(3, 4)
    nodes = [
        helper.make_node(
            "Constant", [], ["perm_w"], value=helper.make_tensor("v", 1, [2, 4], list(range(8)))
        ),
        helper.make_node("Transpose", ["perm_w"], ["wt"]),
        helper.make_node("Mul", ["wt", "two"], ["w2"]),
        helper.make_node("MatMul", ["x", "w2"], ["y"]),
    ]
    inits = {"two": np.float32(2.0), "unused": f32(7)}
    module, ref = build(nodes, {"x": x}, ["y"], inits)
    assert ops(module) == ["MatMul"]
    assert set(module.initializers) == {"w2"}
    assert {i.name for i in module.onnx_model.graph.initializer} == {"w2"}
    np.testing.assert_array_equal(
        module.initializers["w2"], np.arange(8, dtype=np.float32).reshape(2, 4).T * 2
    )
    assert_close(module(x), ref)


@pytest.mark.parametrize("value", [None, 0.0])
def test_pad_fused_into_conv(value: float | None) -> None:
    x = f32(2, 3, 6, 6)
    pad_in = ["x", "p"] + (["v"] if value is not None else [])
    nodes = [
        helper.make_node("Pad", pad_in, ["xp"]),
        helper.make_node("Conv", ["xp", "w", "b"], ["y"], pads=[1, 0, 0, 1]),
    ]
    inits = {"p": np.array([0, 0, 1, 2, 0, 0, 2, 0], np.int64), "w": f32(4, 3, 3, 3), "b": f32(4)}
    if value is not None:
        inits["v"] = np.float32(value)
    module, ref = build(nodes, {"x": x}, ["y"], inits)
    assert ops(module) == ["Conv"]
    assert module.nodes[0].inputs[0] == "x"
    assert list(module.nodes[0].attrs["pads"]) == [2, 2, 2, 1]
    assert_close(module(x), ref)


@pytest.mark.parametrize(
    ("pads", "value"), [([0, 0, 1, 1, 0, 0, 1, 1], 1.5), ([0, 1, 1, 1, 0, 0, 1, 1], None)]
)
def test_pad_not_fused_into_conv(pads: list[int], value: float | None) -> None:
    x = f32(2, 3, 6, 6)
    pad_in = ["x", "p"] + (["v"] if value is not None else [])
    w = f32(4, 4 if pads[1] else 3, 3, 3)
    nodes = [
        helper.make_node("Pad", pad_in, ["xp"]),
        helper.make_node("Conv", ["xp", "w"], ["y"]),
    ]
    inits = {"p": np.array(pads, np.int64), "w": w}
    if value is not None:
        inits["v"] = np.float32(value)
    module, ref = build(nodes, {"x": x}, ["y"], inits)
    assert ops(module) == ["Pad", "Conv"]
    assert_close(module(x), ref)


def test_nop_pad_removed() -> None:
    x = f32(2, 3)
    nodes = [
        helper.make_node("Pad", ["x", "p"], ["xp"]),
        helper.make_node("Relu", ["xp"], ["y"]),
    ]
    module, ref = build(nodes, {"x": x}, ["y"], {"p": np.zeros(4, np.int64)})
    assert ops(module) == ["Relu"]
    assert module.nodes[0].inputs == ("x",)
    assert_close(module(x), ref)


def test_gather_on_graph_input_becomes_onehot_matmul() -> None:
    idx = np.array([[0, 3, 1], [2, 2, -1]], np.int64)
    table = f32(4, 5)
    nodes = [
        helper.make_node("Gather", ["table", "idx"], ["emb"], name="embedding"),
        helper.make_node("ReduceSum", ["emb", "ax"], ["s"]),
        helper.make_node("Add", ["s", "x"], ["y"]),
    ]
    inputs = {"idx": idx, "x": f32(2, 1, 5)}
    module, ref = build(nodes, inputs, ["y"], {"table": table, "ax": np.array([1], np.int64)})
    assert ops(module)[0] == "MatMul"
    assert module.nodes[0].name == "embedding"
    assert module.nodes[0].inputs == ("idx", "table")
    pre = module.onnx_preprocessing
    assert pre is not None
    assert [n.op_type for n in pre.graph.node] == ["OneHot", "Identity"]
    assert pre.opset_import[0].version == 14
    onehot, x = module.preprocess_inputs(*inputs.values())
    assert onehot.dtype == np.float32 and onehot.shape == (2, 3, 4)
    np.testing.assert_array_equal(onehot.argmax(-1), np.where(idx < 0, idx + 4, idx))
    assert module.input_names == ("idx", "x")
    assert module.graph_input_names == ("idx", "x")
    assert_close(module(*inputs.values()), ref)
    # the rewritten graph runs in onnxruntime on the one-hot inputs
    assert_close(tuple(run_ort(module.onnx_model, {"idx": onehot, "x": x})), ref)


@pytest.mark.parametrize("opset", range(13, 22))
def test_accepted_opsets(opset: int) -> None:
    x = f32(2, 3, 4)
    axes = np.array([1], np.int64)
    if opset >= 18:
        nodes = [helper.make_node("ReduceMean", ["x", "a"], ["m"], keepdims=1)]
        inits = {"a": axes}
    else:
        nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1)]
        inits = {}
    nodes += [
        helper.make_node("Squeeze", ["m", "a1"], ["s"]),
        helper.make_node("Clip", ["s", "lo", "hi"], ["y"]),
    ]
    inits.update({"a1": axes, "lo": np.float32(-0.2), "hi": np.float32(0.3)})
    module, ref = build(nodes, {"x": x}, ["y"], inits, opset=opset)
    assert_close(module(x), ref)


def _relu(opset: int) -> onnx.ModelProto:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        {"x": f32(2)},
        ["y"],
        out_types={"y": (TensorProto.FLOAT, [2])},
    )
    model.opset_import[0].version = opset  # opsets 1 to MAX_OPSET are read (converted)
    return model


@pytest.mark.parametrize("opset", [0, MAX_OPSET + 1])
def test_rejected_opsets(opset: int) -> None:
    with pytest.raises(OpsetError, match=f"opset {opset} is not supported"):
        NumpyModule(_relu(opset))


@pytest.mark.parametrize("opset", [1, 6])
def test_opsets_below_7_are_converted(opset: int) -> None:
    x = np.array([-1.5, 2.0], dtype=np.float32)
    np.testing.assert_array_equal(NumpyModule(_relu(opset))(x), np.maximum(x, 0))


def test_missing_default_opset() -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        {"x": f32(2)},
        ["y"],
        out_types={"y": (TensorProto.FLOAT, [2])},
    )
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(OpsetError, match="no default ONNX opset"):
        NumpyModule(model)


def test_node_walk_reproduces_forward() -> None:
    x = f32(5, 4)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1, name="fc"),
        helper.make_node("Clip", ["g", "", "hi"], ["c"], name="clip"),
        helper.make_node("Greater", ["c", "zero"], ["m"]),
        helper.make_node("Where", ["m", "c", "zero"], ["y"]),
    ]
    inits = {"w": f32(3, 4), "b": f32(3), "hi": np.float32(0.5), "zero": np.float32(0)}
    module, ref = build(nodes, {"x": x}, ["y"], inits)
    walk = list(module.iter_nodes())
    assert [n.name for n in walk] == ["fc", "clip", "Greater#2", "Where#3"]
    fc, clip = walk[0], walk[1]
    assert fc.attrs == {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}
    assert set(fc.constants) == {1, 2}
    np.testing.assert_array_equal(fc.constants[1], inits["w"])
    assert clip.inputs == ("g", None, "hi")
    assert clip.spec.input_names == ("input", "min", "max")
    for quant in (False, True):
        values: dict[str, Any] = {"x": x, **module.initializers}
        for node in walk:
            outs = node.run(
                *(None if i is None else values[i] for i in node.inputs), quant_semantics=quant
            )
            values.update(zip(node.outputs, outs, strict=True))
        np.testing.assert_array_equal(values["y"], module(x, quant_semantics=quant))
    assert_close(module(x), ref)


def _batch_reshape_graph(source: str) -> list[onnx.NodeProto]:
    """Reshape(x, Concat(Unsqueeze(Gather(Shape(source), 0)), [-1])) then Gather(Shape(x), 1)."""
    return [
        helper.make_node("Shape", [source], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Gather", ["xs", "one"], ["width"], axis=0),
        helper.make_node("Cast", ["width"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["y", "wf"], ["z"]),
    ]


BATCH_INITS = {
    "zero": np.array(0, dtype=np.int64),
    "one": np.array(1, dtype=np.int64),
    "axes": np.array([0], dtype=np.int64),
    "rest": np.array([-1], dtype=np.int64),
}


def _dynamic_model(source: str, inputs: dict[str, np.ndarray]) -> tuple[NumpyModule, Any]:
    model = make_model(_batch_reshape_graph(source), inputs, ["z"], BATCH_INITS, dynamic_batch=True)
    ref = run_ort(model, inputs)
    return NumpyModule(typed(model, ref)), ref


def test_shape_arithmetic_on_the_batch_axis_is_folded() -> None:
    x = f32(5, 2, 3)
    module, ref = _dynamic_model("x", {"x": x})
    assert ops(module) == ["Reshape", "Mul"]
    assert module.initializers[module.nodes[0].inputs[1]].tolist() == [0, -1]
    assert_close(module(x), ref)
    assert module(x[:2]).shape == (2, 6)


def test_batch_of_another_input_is_not_folded() -> None:
    # "N" is shared by every graph input of make_model: give `other` a static batch instead.
    x, other = f32(5, 2, 3), f32(5, 4)
    model = make_model(_batch_reshape_graph("other"), {"x": x, "other": other}, ["z"], BATCH_INITS)
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "M"
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    ref = run_ort(model, {"x": x, "other": other})
    module = NumpyModule(typed(model, ref))
    assert ops(module) == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Mul"]
    assert_close(module(x, other), ref)
