"""The docs/contract.md §5.3 float forms (quant_fn), docs/contract.md §0 dtypes of Conv/AveragePool,
Brevitas Quant, Unfold, and the registry metadata the quantized layers rely on."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch
from onnx import TensorProto, helper

from fhequant.errors import OnnxImportError, QuantizationError
from fhequant.onnx import ONNX_OPS, REQUIRED, SUPPORTED_OPS, NumpyModule
from onnx_testing import make_model

RNG = np.random.default_rng(7)

MINIMUM_OPS = [
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Cos",
    "Cosh",
    "Div",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "Gemm",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "OneHot",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Round",
    "Selu",
    "Shape",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Slice",
    "Softplus",
    "Squeeze",
    "Sub",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Transpose",
    "Unfold",
    "Unsqueeze",
    "Where",
    "onnx.brevitas.Quant",
]
EXTRA_OPS = [
    "Sqrt",
    "Reciprocal",
    "ReduceMean",
    "ReduceMax",
    "GlobalAveragePool",
    "Softsign",
    "ConvTranspose",
    "Sum",
    "Dropout",
    "Mish",
    "Gelu",
    "Softmax",
    "qonnx.custom_op.general.Quant",
]


def test_supported_ops_cover_the_minimum_set_and_are_sorted() -> None:
    assert len(MINIMUM_OPS) == 72
    assert set(MINIMUM_OPS) <= set(SUPPORTED_OPS)
    assert set(EXTRA_OPS) <= set(SUPPORTED_OPS)
    assert sorted(SUPPORTED_OPS) == SUPPORTED_OPS
    assert set(SUPPORTED_OPS) == set(ONNX_OPS)


def test_registry_metadata() -> None:
    reshape = ONNX_OPS["Reshape"]
    assert reshape.input_names == ("data", "shape")
    assert reshape.raw_inputs == {"shape"}
    assert reshape.raw_input_indices(2) == (1,)
    assert ONNX_OPS["Shape"].raw_output
    assert not ONNX_OPS["Relu"].raw_output
    assert ONNX_OPS["Concat"].is_variadic and ONNX_OPS["Max"].is_variadic
    clip = ONNX_OPS["Clip"]
    assert [i.kind for i in clip.inputs] == ["required", "optional", "optional"]
    assert clip.n_required == 1
    assert ONNX_OPS["Slice"].raw_inputs == {"starts", "ends", "axes", "steps"}
    assert ONNX_OPS["Gather"].raw_inputs == {"indices"}
    assert dict(ONNX_OPS["Gemm"].attrs) == {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}
    assert ONNX_OPS["Concat"].attrs["axis"] is REQUIRED
    quant = ONNX_OPS["onnx.brevitas.Quant"]
    assert quant.raw_inputs == {"scale", "zero_point", "bit_width"}
    assert ONNX_OPS["qonnx.custom_op.general.Quant"].fn is quant.fn
    assert ONNX_OPS["LeakyRelu"].attrs["alpha"] == 0.01
    assert ONNX_OPS["BatchNormalization"].attrs["epsilon"] == 1e-5


def test_resolve_attrs_defaults_and_errors() -> None:
    spec = ONNX_OPS["Gemm"]
    assert spec.resolve_attrs({"transB": 1}) == {
        "alpha": 1.0,
        "beta": 1.0,
        "transA": 0,
        "transB": 1,
    }
    with pytest.raises(OnnxImportError, match=r"'g'.*unknown attribute.*'foo'"):
        spec.resolve_attrs({"foo": 1}, "g")
    with pytest.raises(OnnxImportError, match=r"required attribute.*'axis'"):
        ONNX_OPS["Concat"].resolve_attrs({}, "c")


@pytest.mark.parametrize("op", ["Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"])
def test_comparisons_are_float64_in_quant_form(op: str) -> None:
    a = np.array([1.0, 2.0, 3.0], np.float32)
    b = np.float32([2.0])
    spec = ONNX_OPS[op]
    graph = spec.fn(a, b)
    quant = spec.quant_fn(a, b)
    assert graph.dtype == bool
    assert quant.dtype == np.float64
    np.testing.assert_array_equal(quant, graph.astype(np.float64))


def test_logical_ops_quant_form() -> None:
    a, b = np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.0])
    np.testing.assert_array_equal(ONNX_OPS["Or"].quant_fn(a, b), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(ONNX_OPS["And"].quant_fn(a, b), [0.0, 1.0, 0.0])
    out = ONNX_OPS["Not"].quant_fn(np.array([True, False]))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [0.0, 1.0])


def test_where_quant_form_is_the_arithmetic_blend() -> None:
    c = np.array([1.0, 0.0, 0.0])
    t = np.array([2.0, 3.0, np.inf])
    f = np.array([5.0, 7.0, 1.0])
    quant = ONNX_OPS["Where"].quant_fn(c, t, f)
    np.testing.assert_array_equal(quant[:2], [2.0, 7.0])
    assert np.isnan(quant[2])  # 0·inf: the blend form differs from a selection
    np.testing.assert_array_equal(ONNX_OPS["Where"].fn(c, t, f), [2.0, 7.0, 1.0])
    np.testing.assert_array_equal(ONNX_OPS["Where"].quant_fn(c[:2] > 0, t[:2], f[:2]), [2.0, 7.0])


def test_div_forms() -> None:
    a = np.array([1.0, -3.0], np.float32)
    b = np.array([0.0, 2.0], np.float32)
    np.testing.assert_array_equal(ONNX_OPS["Div"].quant_fn(a, b), [1.0, -1.5])
    assert ONNX_OPS["Div"].quant_fn(a, b).dtype == np.float32
    assert np.isinf(ONNX_OPS["Div"].fn(a, b)[0])
    ai, bi = np.array([-7, 7, 5]), np.array([2, 2, 0])
    np.testing.assert_array_equal(ONNX_OPS["Div"].quant_fn(ai, bi), [-4, 3, 5])
    np.testing.assert_array_equal(ONNX_OPS["Div"].fn(ai[:2], bi[:2]), [-3, 3])


def test_log_sigmoid_softplus_prelu_forms() -> None:
    x = np.array([-3.0, 0.0, 2.0], np.float32)
    log_q = ONNX_OPS["Log"].quant_fn(x)
    np.testing.assert_array_equal(log_q, np.log(np.maximum(x, np.float32(1e-8))))
    assert log_q.dtype == np.float32
    assert np.isneginf(ONNX_OPS["Log"].fn(x)[1])
    np.testing.assert_array_equal(ONNX_OPS["Sigmoid"].fn(x), np.exp(-np.logaddexp(0, -x)))
    np.testing.assert_array_equal(ONNX_OPS["Softplus"].fn(x), np.log(np.exp(x) + 1))
    np.testing.assert_array_equal(ONNX_OPS["Erf"].fn(x), scipy.special.erf(x))
    slope = np.float32([-0.5])
    np.testing.assert_array_equal(
        ONNX_OPS["PRelu"].quant_fn(x, slope), np.minimum(0, slope * x) + np.maximum(0, x)
    )
    np.testing.assert_array_equal(ONNX_OPS["PRelu"].fn(x, slope), [1.5, 0.0, 2.0])
    np.testing.assert_array_equal(ONNX_OPS["Round"].fn(np.float32([0.5, 1.5, -2.5])), [0, 2, -2])


def test_cast_forms() -> None:
    x = np.array([0.0, 1.25, -2.0], np.float32)
    cast = ONNX_OPS["Cast"]
    assert cast.fn(x, to=1).dtype == np.float32
    assert cast.quant_fn(x, to=1).dtype == np.float64
    np.testing.assert_array_equal(cast.quant_fn(x, to=9), [0.0, 1.0, 1.0])
    assert cast.quant_fn(x, to=9).dtype == np.float64
    assert cast.fn(x, to=9).dtype == bool
    assert cast.quant_fn(x, to=7).dtype == np.int64


def test_module_forward_quant_semantics() -> None:
    x = RNG.normal(size=(4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Greater", ["x", "zero"], ["c"]),
        helper.make_node("Cast", ["c"], ["y"], to=1),
    ]
    types = {"c": (TensorProto.BOOL, [4, 3]), "y": (TensorProto.FLOAT, [4, 3])}
    model = make_model(nodes, {"x": x}, ["c", "y"], {"zero": np.float32(0)}, out_types=types)
    module = NumpyModule(model)
    c, y = module(x)
    assert c.dtype == bool and y.dtype == np.float32
    cq, yq = module(x, quant_semantics=True)
    assert cq.dtype == np.float64 and yq.dtype == np.float64
    np.testing.assert_array_equal(cq, c)


def _conv_reference(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """A direct float64 loop: out[n, o, i, j] = sum x_pad[n, c, i+ki, j+kj] w[o, c, ki, kj]."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = xp.shape
    o, _, kh, kw = w.shape
    out = np.zeros((n, o, h - kh + 1, wd - kw + 1))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            patch = xp[:, :, i : i + kh, j : j + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w.astype(np.float64))
    return out


@pytest.mark.parametrize("pad", [0, 1])
def test_conv_is_float64_with_a_float32_padding_buffer(pad: int) -> None:
    x = RNG.normal(size=(2, 2, 5, 5))  # float64 data, not representable in float32
    w = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
    y = ONNX_OPS["Conv"].fn(x, w, None, pads=[pad] * 4)
    assert y.dtype == np.float64
    src = x.astype(np.float32) if pad else x  # padded data goes through a float32 buffer
    np.testing.assert_allclose(y, _conv_reference(src, w, pad), rtol=1e-12, atol=1e-12)
    if pad:
        assert not np.allclose(y, _conv_reference(x, w, pad), rtol=1e-12, atol=1e-12)


def test_average_pool_is_float64() -> None:
    """The calibration form is float64 (contract §0); the graph form has the input's dtype."""
    x = RNG.normal(size=(1, 1, 4, 4)).astype(np.float32)
    y = ONNX_OPS["AveragePool"].quant_fn(x, kernel_shape=[2, 2], strides=[2, 2])
    assert y.dtype == np.float64
    graph = ONNX_OPS["AveragePool"].fn(x, kernel_shape=[2, 2], strides=[2, 2])
    assert graph.dtype == np.float32
    np.testing.assert_array_equal(graph, y.astype(np.float32))
    expected = x.astype(np.float64).reshape(1, 1, 2, 2, 2, 2).sum(axis=(3, 5)) / 4
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("kernel", "pads", "strides", "dilations"),
    [((2, 2), 0, 1, 1), ((3, 2), 1, 2, 1), ((2, 3), 0, 1, 2)],
)
def test_unfold_matches_torch(
    kernel: tuple[int, int], pads: int, strides: int, dilations: int
) -> None:
    x = RNG.normal(size=(2, 3, 6, 7)).astype(np.float32)
    ours = ONNX_OPS["Unfold"].fn(
        x, kernel_shape=kernel, pads=[pads] * 4, strides=[strides] * 2, dilations=[dilations] * 2
    )
    ref = torch.nn.functional.unfold(
        torch.from_numpy(x), kernel, dilation=dilations, padding=pads, stride=strides
    ).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-7)


def test_brevitas_quant_clips_then_rounds() -> None:
    quant = ONNX_OPS["onnx.brevitas.Quant"].fn
    x = np.array([0.125, 0.375, -2.375, 1.85, 5.0], np.float32)
    s, z, b = np.float32(0.25), np.float32(0.0), np.float32(4.0)
    # x/s = [0.5, 1.5, -9.5, 7.4, 20] -> clip [-8, 7] -> rint -> [0, 2, -8, 7, 7]
    np.testing.assert_array_equal(quant(x, s, z, b), [0.0, 0.5, -2.0, 1.75, 1.75])
    # narrow: [-7, 7]
    np.testing.assert_array_equal(quant(x, s, z, b, narrow=1), [0.0, 0.5, -1.75, 1.75, 1.75])
    # unsigned 3 bits with zero point 2: y = x/s + 2 clipped to [0, 7]
    out = quant(x, s, np.float32(2.0), np.float32(3.0), signed=0)
    # y = [2.5, 3.5, -7.5, 9.4, 22] -> clip -> [2.5, 3.5, 0, 7, 7] -> rint [2, 4, 0, 7, 7]
    np.testing.assert_array_equal(out, [0.0, 0.5, -0.5, 1.25, 1.25])
    assert out.dtype == np.float32


def test_brevitas_quant_rejects_bad_bit_width_and_rounding() -> None:
    quant = ONNX_OPS["onnx.brevitas.Quant"].fn
    x = np.zeros(3, np.float32)
    with pytest.raises(QuantizationError, match="bit_width"):
        quant(x, np.float32(1), np.float32(0), np.float32(2.5))
    with pytest.raises(QuantizationError, match="rounding_mode"):
        quant(x, np.float32(1), np.float32(0), np.float32(4), rounding_mode="STOCHASTIC")


def test_brevitas_quant_in_a_graph_is_not_folded() -> None:
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    w = RNG.normal(size=(4, 2)).astype(np.float32)
    inits = {"w": w, "s": np.float32(0.1), "z": np.float32(0), "b": np.float32(4)}
    nodes = [
        helper.make_node("Quant", ["w", "s", "z", "b"], ["wq"], domain="onnx.brevitas"),
        helper.make_node("MatMul", ["x", "wq"], ["y"]),
    ]
    model = make_model(
        nodes,
        {"x": x},
        ["y"],
        inits,
        out_types={"y": (TensorProto.FLOAT, [3, 2])},
        extra_opsets=(("onnx.brevitas", 1),),
    )
    module = NumpyModule(model)
    assert [n.op_type for n in module.nodes] == ["onnx.brevitas.Quant", "MatMul"]
    quant_node = module.nodes[0]
    assert set(quant_node.constants) == {0, 1, 2, 3}
    wq = np.clip(w / np.float32(0.1), -8, 7)
    expected = x @ ((np.rint(wq) - 0) * np.float32(0.1))
    np.testing.assert_allclose(module(x), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("rows", "chunk"), [(97, 1), (300, 7), (1000, 64), (257, 256)])
def test_batch_invariant_matmul_does_not_depend_on_the_split(rows: int, chunk: int) -> None:
    from fhequant.onnx.ops.linear import batch_invariant_matmul

    x = RNG.normal(size=(rows, 48)).astype(np.float32)
    w = RNG.normal(size=(48, 10)).astype(np.float32)
    full = batch_invariant_matmul(x, w)
    parts = np.concatenate(
        [batch_invariant_matmul(x[i : i + chunk], w) for i in range(0, rows, chunk)]
    )
    assert full.dtype == np.float32
    np.testing.assert_array_equal(parts, full)
    np.testing.assert_allclose(full, x @ w, rtol=1e-5, atol=1e-5)
    x3 = x[: rows - rows % 2].reshape(-1, 2, 48)
    np.testing.assert_array_equal(
        batch_invariant_matmul(x3, w).reshape(-1, 10), full[: len(x3) * 2]
    )


def test_specs_and_nodes_are_hashable() -> None:
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        {"x": x},
        ["y"],
        out_types={"y": (TensorProto.FLOAT, [2, 3])},
    )
    node = NumpyModule(model).nodes[0]
    assert {node: 1}[node] == 1
    assert {ONNX_OPS["Relu"]: 1}[node.spec] == 1
    with pytest.raises(AttributeError):
        node.name = "other"  # type: ignore[misc]


def test_average_pool_sums_windows_row_major() -> None:
    """((a + b) + c) + d, as torch's float64 avg_pool2d that the reference calibrates with."""
    pool = ONNX_OPS["AveragePool"].fn
    x = np.tile(np.array([[1e16, 1.0], [-1e16, 1.0]]), (2, 3, 2, 2))
    np.testing.assert_array_equal(pool(x, kernel_shape=(2, 2), strides=(2, 2)), 0.25)
    y = RNG.normal(size=(2, 2, 7, 6)) * 10.0 ** RNG.integers(-8, 8, size=(2, 2, 7, 6))
    out = pool(y, kernel_shape=(3, 2), strides=(2, 1), pads=(1, 0, 1, 1))
    yp = np.pad(y.astype(np.float32).astype(np.float64), ((0, 0), (0, 0), (1, 1), (0, 1)))
    expected = np.zeros(out.shape)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            acc = yp[:, :, 2 * i, j].copy()
            for ki, kj in [(0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]:
                acc = acc + yp[:, :, 2 * i + ki, j + kj]
            cells = sum(
                1 for ki in range(3) for kj in range(2) if 1 <= 2 * i + ki <= 7 and j + kj < 6
            )
            expected[:, :, i, j] = acc / cells
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("domain", ["onnx.brevitas", "qonnx.custom_op.general"])
def test_quant_domain_without_opset_import(domain: str) -> None:
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    inits = {"s": np.float32(0.5), "z": np.float32(0), "b": np.float32(3)}
    node = helper.make_node("Quant", ["x", "s", "z", "b"], ["y"], domain=domain, narrow=1)
    model = make_model([node], {"x": x}, ["y"], inits, out_types={"y": (TensorProto.FLOAT, [3, 4])})
    module = NumpyModule(model)
    assert module.nodes[0].op_type == f"{domain}.Quant"
    np.testing.assert_array_equal(module(x), np.rint(np.clip(x / np.float32(0.5), -3, 3)) * 0.5)
