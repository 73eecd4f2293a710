"""Every registered op against onnxruntime on single-node models (attribute variants included).

Tolerance: rtol 1e-5 / atol 1e-6. Conv, ConvTranspose and AveragePool run in float64 here
(docs/contract.md §0) while onnxruntime uses float32; the values are compared with the same
tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fhequant.onnx import NumpyModule
from onnx_testing import make_model, run_ort, single_node, typed

RNG = np.random.default_rng(1234)
FLOAT64_OPS = {"Conv", "ConvTranspose", "AveragePool"}


def f32(*shape: int, lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    return RNG.uniform(lo, hi, size=shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def check(op: str, ours: Any, ref: list[np.ndarray]) -> None:
    got = ours if isinstance(ours, tuple) else (ours,)
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        g = np.asarray(g)
        assert g.shape == r.shape
        if r.dtype == bool or r.dtype.kind in "iu":
            assert g.dtype == r.dtype
            np.testing.assert_array_equal(g, r)
            continue
        if op not in FLOAT64_OPS:
            assert g.dtype == r.dtype, (g.dtype, r.dtype)
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


# (op, graph inputs, initializers, attrs, opset, input order or None)
Case = tuple[str, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any], int, Any]


def unary(op: str, x: np.ndarray, opset: int = 14, **attrs: Any) -> Case:
    return (op, {"x": x}, {}, attrs, opset, None)


X = f32(3, 4)
POS = f32(3, 4, lo=0.1, hi=3.0)
UNIT = f32(3, 4, lo=-0.9, hi=0.9)
TIES = np.array([[-2.5, -1.5, -0.5, 0.5], [1.5, 2.5, 0.3, -0.7]], dtype=np.float32)

UNARY_CASES: list[Case] = [
    unary("Abs", X),
    unary("Neg", X),
    unary("Sign", X),
    unary("Floor", X),
    unary("Ceil", X),
    unary("Round", TIES),
    unary("Exp", X),
    unary("Sqrt", POS),
    unary("Erf", X),
    unary("Sin", X),
    unary("Cos", X),
    unary("Tan", UNIT),
    unary("Asin", UNIT),
    unary("Acos", UNIT),
    unary("Atan", X),
    unary("Sinh", X),
    unary("Cosh", X),
    unary("Asinh", X),
    unary("Acosh", f32(3, 4, lo=1.1, hi=3.0)),
    unary("Atanh", UNIT),
    unary("Log", POS),
    unary("Reciprocal", POS),
    unary("Identity", X),
    unary("Relu", X),
    unary("Sigmoid", f32(3, 4, lo=-8, hi=8)),
    unary("Tanh", X),
    unary("Softplus", X),
    unary("Softsign", X),
    unary("HardSwish", f32(3, 4, lo=-5, hi=5)),
    unary("Mish", X, opset=18),
    unary("Elu", X),
    unary("Elu", X, alpha=0.5),
    unary("Selu", X),
    unary("Selu", X, alpha=1.5, gamma=0.9),
    unary("Celu", X, alpha=2.0),
    unary("LeakyRelu", X),
    unary("LeakyRelu", X, alpha=0.2),
    unary("ThresholdedRelu", X, alpha=0.5),
    unary("HardSigmoid", f32(3, 4, lo=-4, hi=4)),
    unary("HardSigmoid", f32(3, 4, lo=-4, hi=4), alpha=0.3, beta=0.4),
    unary("Gelu", X, opset=20),
    unary("Gelu", X, opset=20, approximate="tanh"),
    unary("Softmax", f32(2, 3, 4)),
    unary("Softmax", f32(2, 3, 4), axis=1),
    unary("Softmax", f32(2, 3, 4), opset=13, axis=0),
    unary("LogSoftmax", f32(2, 3, 4), axis=-2),
    unary("Flatten", f32(2, 3, 4)),
    unary("Flatten", f32(2, 3, 4), axis=0),
    unary("Flatten", f32(2, 3, 4), axis=2),
    unary("Flatten", f32(2, 3, 4), axis=-1),
    unary("Transpose", f32(2, 3, 4)),
    unary("Transpose", f32(2, 3, 4), perm=[0, 2, 1]),
    unary("GlobalAveragePool", f32(2, 3, 4, 5)),
    unary("GlobalMaxPool", f32(2, 3, 4, 5)),
    unary("Shape", f32(2, 3, 4)),
    unary("Shape", f32(2, 3, 4), opset=15, start=1),
    unary("Shape", f32(2, 3, 4), opset=15, start=-2, end=-1),
    unary("Cast", X, to=11),
    unary("Cast", X * 3, to=7),
    unary("Cast", X, to=9),
    unary("Cast", TIES, to=6),
    unary("Dropout", X, opset=13),
    unary("Not", X > 0),
]


def binary(op: str, a: np.ndarray, b: np.ndarray, opset: int = 14, **attrs: Any) -> Case:
    return (op, {"a": a, "b": b}, {}, attrs, opset, None)


def with_init(
    op: str,
    x: np.ndarray,
    inits: dict[str, np.ndarray],
    opset: int = 14,
    order: list[str] | None = None,
    **attrs: Any,
) -> Case:
    return (op, {"x": x}, inits, attrs, opset, order)


BINARY_CASES: list[Case] = [
    binary("Add", f32(3, 4), f32(4)),
    binary("Add", f32(2, 1, 4), f32(3, 1)),
    binary("Sub", f32(3, 4), f32(3, 1)),
    binary("Mul", f32(2, 3, 4), f32(1, 3, 1)),
    binary("Div", f32(3, 4), f32(4, lo=0.5, hi=2)),
    binary("Div", i64(7, 8, 9, 10), i64(2, 3, 4, 5)),
    binary("Pow", POS, f32(3, 4)),
    binary("Equal", np.array([1, 2, 3], np.float32), np.array([1, 0, 3], np.float32)),
    binary("Greater", X, f32(4)),
    binary("GreaterOrEqual", np.array([1, 2, 3], np.float32), np.float32([2])),
    binary("Less", X, f32(3, 1)),
    binary("LessOrEqual", np.array([1, 2, 3], np.float32), np.float32([2])),
    binary("And", X > 0, f32(4) > 0),
    binary("Or", X > 0, f32(3, 1) > 0),
    binary("Xor", X > 0, f32(3, 4) > 0),
    binary("PRelu", X, f32(4, lo=0.05, hi=0.5)),
    binary("MatMul", f32(3, 5), f32(5, 4)),
    binary("MatMul", f32(2, 3, 5), f32(5, 4)),
    binary("MatMul", f32(2, 3, 5), f32(2, 5, 4)),
    binary("Gemm", f32(3, 5), f32(5, 4)),
    binary("Gemm", f32(5, 3), f32(5, 4), transA=1),
    binary("Gemm", f32(3, 5), f32(4, 5), transB=1, alpha=0.5),
    ("Max", {"a": f32(3, 4), "b": f32(4), "c": f32(3, 1)}, {}, {}, 14, None),
    ("Min", {"a": f32(3, 4), "b": f32(4), "c": f32(3, 1)}, {}, {}, 14, None),
    ("Sum", {"a": f32(3, 4), "b": f32(4), "c": f32(3, 1)}, {}, {}, 14, None),
    ("Mean", {"a": f32(3, 4), "b": f32(4)}, {}, {}, 14, None),
    ("Concat", {"a": f32(2, 3), "b": f32(2, 1), "c": f32(2, 2)}, {}, {"axis": 1}, 14, None),
    ("Concat", {"a": f32(2, 3), "b": f32(1, 3)}, {}, {"axis": -2}, 14, None),
    ("Where", {"c": X > 0, "a": X, "b": f32(4)}, {}, {}, 14, None),
    ("Gemm", {"a": f32(3, 5)}, {"w": f32(4, 5), "c": f32(4)}, {"transB": 1}, 14, None),
    ("Gemm", {"a": f32(3, 5)}, {"w": f32(5, 4), "c": f32(1, 4)}, {"beta": 2.0}, 14, None),
    ("Gemm", {"a": f32(3, 5)}, {"w": f32(5, 4), "c": f32(3, 1)}, {"beta": 0.5}, 14, None),
    ("Gemm", {"a": f32(3, 5)}, {"w": f32(5, 4), "c": f32(1)}, {"alpha": 2.0}, 14, None),
    with_init("Clip", X, {"lo": np.float32(-0.5), "hi": np.float32(0.7)}),
    with_init("Clip", X, {"lo": np.float32(-0.5)}),
    with_init("Clip", X, {"hi": np.float32(0.5)}, order=["x", "", "hi"]),
    unary("Clip", X, opset=13),
    with_init(
        "BatchNormalization",
        f32(2, 3, 4, 4),
        {"s": f32(3), "b": f32(3), "m": f32(3), "v": f32(3, lo=0.1, hi=2)},
    ),
    with_init(
        "BatchNormalization",
        f32(5, 3),
        {"s": f32(3), "b": f32(3), "m": f32(3), "v": f32(3, lo=0.1, hi=2)},
        epsilon=0.01,
    ),
]


def conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    op: str = "Conv",
    opset: int = 14,
    **attrs: Any,
) -> Case:
    inits = {"w": w} if b is None else {"w": w, "b": b}
    return (op, {"x": x}, inits, attrs, opset, None)


CONV_CASES: list[Case] = [
    conv(f32(2, 3, 6, 6), f32(4, 3, 3, 3), f32(4)),
    conv(f32(2, 3, 7, 6), f32(4, 3, 3, 3), f32(4), strides=[2, 2], pads=[1, 1, 1, 1]),
    conv(f32(2, 3, 6, 6), f32(4, 3, 3, 2), None, pads=[0, 1, 1, 2]),
    conv(f32(2, 4, 6, 6), f32(6, 2, 3, 3), f32(6), group=2),
    conv(f32(2, 4, 6, 6), f32(4, 1, 3, 3), f32(4), group=4, pads=[1, 1, 1, 1]),
    conv(f32(2, 3, 8, 8), f32(4, 3, 3, 3), f32(4), dilations=[2, 2]),
    conv(f32(2, 3, 7, 7), f32(4, 3, 3, 3), f32(4), auto_pad="SAME_UPPER", strides=[2, 2]),
    conv(f32(2, 3, 6, 6), f32(4, 3, 2, 2), f32(4), auto_pad="SAME_LOWER"),
    conv(f32(2, 3, 6, 6), f32(4, 3, 3, 3), f32(4), auto_pad="VALID"),
    conv(f32(2, 3, 10), f32(4, 3, 3), f32(4), strides=[2], pads=[1, 2]),
    conv(f32(1, 2, 4, 4, 4), f32(3, 2, 2, 2, 2), f32(3)),
    conv(f32(2, 3, 4, 4), f32(3, 2, 3, 3), f32(2), op="ConvTranspose"),
    conv(
        f32(2, 3, 4, 4),
        f32(3, 2, 3, 3),
        f32(2),
        op="ConvTranspose",
        strides=[2, 2],
        pads=[1, 0, 1, 1],
        output_padding=[1, 0],
    ),
    conv(f32(2, 4, 4, 4), f32(4, 1, 3, 3), None, op="ConvTranspose", group=2, dilations=[2, 1]),
    conv(
        f32(2, 3, 4, 4),
        f32(3, 2, 3, 3),
        f32(2),
        op="ConvTranspose",
        strides=[2, 2],
        output_shape=[8, 8],
    ),
    conv(f32(2, 3, 5), f32(3, 2, 3), f32(2), op="ConvTranspose", strides=[3]),
]


def pool(op: str, x: np.ndarray, opset: int = 14, **attrs: Any) -> Case:
    return (op, {"x": x}, {}, attrs, opset, None)


POOL_CASES: list[Case] = [
    pool("AveragePool", f32(2, 3, 6, 6), kernel_shape=[2, 2], strides=[2, 2]),
    pool("AveragePool", f32(2, 3, 5, 6), kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    pool(
        "AveragePool", f32(2, 3, 5, 6), kernel_shape=[3, 3], pads=[1, 0, 2, 1], count_include_pad=1
    ),
    pool("AveragePool", f32(2, 3, 5, 5), kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    pool(
        "AveragePool",
        f32(2, 3, 5, 5),
        kernel_shape=[2, 2],
        strides=[2, 2],
        ceil_mode=1,
        count_include_pad=1,
    ),
    pool(
        "AveragePool",
        f32(2, 3, 6, 7),
        kernel_shape=[3, 2],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        ceil_mode=1,
        count_include_pad=1,
    ),
    pool("AveragePool", f32(2, 3, 9), kernel_shape=[3], strides=[2]),
    pool("AveragePool", f32(2, 3, 7, 7), opset=19, kernel_shape=[2, 2], dilations=[2, 2]),
    pool("AveragePool", f32(2, 3, 5, 5), kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
    pool("MaxPool", f32(2, 3, 6, 6), kernel_shape=[2, 2], strides=[2, 2]),
    pool("MaxPool", f32(2, 3, 5, 6), kernel_shape=[3, 3], pads=[1, 0, 1, 2]),
    pool("MaxPool", f32(2, 3, 5, 5), kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    pool("MaxPool", f32(2, 3, 7, 7), kernel_shape=[2, 2], dilations=[2, 2]),
    pool("MaxPool", f32(2, 3, 9), kernel_shape=[3], strides=[2], pads=[1, 1]),
]

SHAPE_CASES: list[Case] = [
    with_init("Reshape", f32(2, 3, 4), {"s": i64(0, -1)}),
    with_init("Reshape", f32(2, 3, 4), {"s": i64(4, 3, 2)}),
    with_init("Squeeze", f32(2, 1, 4, 1), {"a": i64(1, -1)}),
    unary("Squeeze", f32(2, 1, 4, 1)),
    with_init("Unsqueeze", f32(2, 3), {"a": i64(-1, 0)}),
    with_init("Expand", f32(3, 1), {"s": i64(2, 1, 4)}),
    with_init(
        "Slice", f32(5, 6), {"s": i64(1, -1), "e": i64(4, -7), "a": i64(0, -1), "st": i64(2, -2)}
    ),
    with_init("Slice", f32(5, 6), {"s": i64(-100), "e": i64(100), "a": i64(1)}),
    with_init("Slice", f32(5, 6), {"s": i64(10), "e": i64(-10), "a": i64(0), "st": i64(-1)}),
    with_init("Slice", f32(5, 6), {"s": i64(1, 2), "e": i64(3, 5)}),
    with_init("Gather", f32(5, 4), {"i": i64(0, -1, 2)}),
    with_init("Gather", f32(5, 4), {"i": np.array([[1, 3], [0, -2]])}, axis=1),
    with_init("Pad", f32(2, 3, 4), {"p": i64(0, 1, 2, 0, 2, 1), "v": np.float32(1.5)}),
    with_init("Pad", f32(2, 3, 4), {"p": i64(0, 1, 2, 0, 2, 1)}, mode="reflect"),
    with_init("Pad", f32(2, 3, 4), {"p": i64(0, 1, 2, 0, 2, 1)}, mode="edge"),
    with_init("Pad", f32(2, 3, 4), {"p": i64(0, -1, 1, 0, 1, -2)}),
    with_init(
        "Pad",
        f32(2, 3, 4),
        {"p": i64(1, 2, 0, 1), "a": i64(-1, 1)},
        order=["x", "p", "", "a"],
        opset=18,
    ),
    with_init(
        "Pad",
        f32(2, 3, 4),
        {"p": i64(1, 2, 0, 1), "a": i64(2, 1)},
        order=["x", "p", "", "a"],
        opset=19,
        mode="wrap",
    ),
    with_init("Tile", f32(2, 3), {"r": i64(2, 3)}),
    with_init("ReduceSum", f32(2, 3, 4), {"a": i64(1, -1)}, opset=13),
    with_init("ReduceSum", f32(2, 3, 4), {"a": i64(0)}, opset=13, keepdims=0),
    unary("ReduceSum", f32(2, 3, 4), opset=13),
    unary("ReduceSum", f32(2, 3, 4), opset=13, noop_with_empty_axes=1),
    unary("ReduceMean", f32(2, 3, 4), opset=13, axes=[-1]),
    with_init("ReduceMean", f32(2, 3, 4), {"a": i64(1)}, opset=18, keepdims=0),
    unary("ReduceMax", f32(2, 3, 4), opset=13, axes=[0, 2], keepdims=0),
    with_init("ReduceMax", f32(2, 3, 4), {"a": i64(-2)}, opset=18),
    unary("ReduceMin", f32(2, 3, 4), opset=13),
    unary("ReduceProd", f32(2, 3, 4), opset=13, axes=[1]),
    (
        "OneHot",
        {"i": np.array([[0, 2], [-1, 1]], np.int64)},
        {"d": np.array(3, np.int64), "v": np.float32([-1, 4])},
        {},
        14,
        None,
    ),
    (
        "OneHot",
        {"i": np.array([[0, 2], [-1, 1]], np.int64)},
        {"d": np.array(3, np.int64), "v": np.float32([0, 1])},
        {"axis": 1},
        14,
        None,
    ),
]

ALL_CASES = UNARY_CASES + BINARY_CASES + CONV_CASES + POOL_CASES + SHAPE_CASES


def _case_id(case: Case) -> str:
    op, _, _, attrs, opset, _ = case
    extra = ",".join(f"{k}={v}" for k, v in attrs.items())
    return f"{op}-o{opset}-{extra}" if extra else f"{op}-o{opset}"


@pytest.mark.parametrize("case", ALL_CASES, ids=[_case_id(c) for c in ALL_CASES])
def test_op_matches_onnxruntime(case: Case) -> None:
    op, inputs, inits, attrs, opset, order = case
    n_out = 2 if op == "Dropout" else 1
    model, ref = single_node(op, inputs, inits, attrs, opset, order, n_outputs=n_out)
    ours = NumpyModule(model).forward(*inputs.values())
    check(op, ours, ref)


def test_constant_and_constant_of_shape_chain() -> None:
    from onnx import helper

    x = f32(2, 3)
    nodes = [
        helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0, 3.0]),
        helper.make_node("Constant", [], ["k"], value_int=2),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node(
            "ConstantOfShape", ["s"], ["z"], value=helper.make_tensor("v", 1, [1], [0.25])
        ),
        helper.make_node("Add", ["x", "c"], ["a"]),
        helper.make_node("Add", ["a", "z"], ["y"]),
        helper.make_node("Cast", ["k"], ["kf"], to=1),
        helper.make_node("Mul", ["y", "kf"], ["out"]),
    ]
    model = make_model(nodes, {"x": x}, ["out"])
    ref = run_ort(model, {"x": x})
    module = NumpyModule(typed(model, ref))
    assert [n.op_type for n in module.nodes] == ["Shape", "ConstantOfShape", "Add", "Add", "Mul"]
    check("Mul", module(x), ref)


@pytest.mark.parametrize(
    ("opset", "inits", "attrs", "n_out"),
    [
        (13, {"s": i64(1, 4, 2)}, {"axis": 1}, 3),
        (13, {}, {"axis": -1}, 2),
        (18, {}, {"axis": 1, "num_outputs": 3}, 3),
        (18, {}, {"axis": 1, "num_outputs": 2}, 2),
    ],
)
def test_split(opset: int, inits: dict[str, np.ndarray], attrs: dict[str, Any], n_out: int) -> None:
    x = f32(2, 7, 4)
    model, ref = single_node("Split", {"x": x}, inits, attrs, opset, n_outputs=n_out)
    check("Split", NumpyModule(model).forward(x), ref)


@pytest.mark.parametrize(("axis", "bias"), [(-1, True), (1, False), (-2, True)])
def test_layer_normalization(axis: int, bias: bool) -> None:
    x = f32(2, 3, 4)
    shape = x.shape[axis:]
    inits = {"s": f32(*shape)}
    if bias:
        inits["b"] = f32(*shape)
    model, ref = single_node("LayerNormalization", {"x": x}, inits, {"axis": axis}, 17, n_outputs=3)
    check("LayerNormalization", NumpyModule(model).forward(x), ref)


@pytest.mark.parametrize(
    ("start", "limit", "delta"),
    [(2, 11, 3), (5, 1, 2), (np.float32(1.5), np.float32(-1), np.float32(-0.75))],
)
def test_range(start: Any, limit: Any, delta: Any) -> None:
    dtype = np.float32 if isinstance(start, np.floating) else np.int64
    s = np.array(start, dtype)
    inits = {"l": np.array(limit, dtype), "d": np.array(delta, dtype)}
    model, ref = single_node("Range", {"s": s}, inits)
    check("Range", NumpyModule(model).forward(s), ref)
