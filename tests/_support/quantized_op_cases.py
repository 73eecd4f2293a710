"""One small calibrated case per quantized op class, shared by the executor and JSON tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fhequant.quantization import QuantizationOptions, QuantizedArray
from fhequant.quantized import ONNX_OPS_TO_QUANTIZED_IMPL, QuantizedOp

IN_BITS = 4

#: The op types of the reference implementation: the registry must keep every one of them.
REFERENCE_OP_TYPES = frozenset(
    {
        *("Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Celu", "Clip", "Concat"),
        *("ConstantOfShape", "Conv", "Div", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten"),
        *("Floor", "Gather", "Gemm", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish"),
        *("Identity", "LeakyRelu", "Less", "LessOrEqual", "Log", "MatMul", "Max", "MaxPool"),
        *("Min", "Mul", "Neg", "Not", "Or", "PRelu", "Pad", "Pow", "ReduceSum", "Relu"),
        *("Reshape", "Round", "Selu", "Shape", "Sigmoid", "Sign", "Slice", "Softplus"),
        *("Squeeze", "Sub", "Tanh", "Transpose", "Unfold", "Unsqueeze", "Where"),
        "onnx.brevitas.Quant",
    }
)


def _f32(*shape: int, seed: int, mean: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, 1.0, size=shape).astype(np.float32)


def _weights(values: np.ndarray, signed: bool = True) -> QuantizedArray:
    opts = QuantizationOptions(IN_BITS, is_signed=signed)
    return QuantizedArray(IN_BITS, values, options=opts)


@dataclass
class OpCase:
    """An op type, its construction arguments and float inputs (None = raw/constant)."""

    case_id: str
    op_type: str
    inputs: list[Any]
    constants: dict[int, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    encrypted: tuple[str, ...] = ("x",)
    graph_output: bool = False
    rounding: int | None = None
    raw_inputs: tuple[int, ...] = ()

    def build(self) -> tuple[QuantizedOp, list[Any]]:
        """Construct and calibrate the op; return it and its quantized inputs."""
        cls = ONNX_OPS_TO_QUANTIZED_IMPL[self.op_type]
        kwargs: dict[str, Any] = dict(self.attrs)
        if cls.is_mixing:
            kwargs["rounding_threshold_bits"] = self.rounding
        n_in = 5 if cls.quantize_inputs_with_model_outputs_precision else IN_BITS
        op = cls(
            5,
            f"{self.case_id}_node",
            int_input_names=set(self.encrypted),
            constant_inputs=dict(self.constants),
            input_quant_opts=QuantizationOptions(n_in, is_signed=True),
            **kwargs,
        )
        op.calibrate(*self.inputs)
        q_inputs = [
            x if i in self.raw_inputs else QuantizedArray(IN_BITS, x, is_signed=True)
            for i, x in enumerate(self.inputs)
        ]
        op.produces_graph_output = self.graph_output
        if cls.is_mixing:
            op.q_impl(*q_inputs, calibrate_rounding=True)
        return op, q_inputs


X = _f32(4, 3, 5, seed=0)
XPOS = np.abs(X) + np.float32(0.1)
IMG = _f32(2, 3, 6, 6, seed=1)
SEQ = _f32(2, 4, 9, seed=2)
MAT = _f32(6, 5, seed=3)


def _univariate_cases() -> list[OpCase]:
    simple = [
        "Abs",
        "Celu",
        "Elu",
        "Erf",
        "Exp",
        "Floor",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "LeakyRelu",
        "Neg",
        "Not",
        "Relu",
        "Round",
        "Selu",
        "Sigmoid",
        "Sign",
        "Softplus",
        "Softsign",
        "Tanh",
        # issue 13: every univariate function is one table lookup
        *("Acos", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Cos", "Cosh", "Gelu", "Mish"),
        *("Reciprocal", "Sin", "Sinh", "Tan"),
    ]
    cases = [OpCase(op, op, [X]) for op in simple]
    cases += [OpCase(op, op, [XPOS]) for op in ("Acosh", "Sqrt")]
    cases.append(OpCase("Gelu_tanh", "Gelu", [X], attrs={"approximate": "tanh"}))
    cases += [
        OpCase("Log", "Log", [XPOS]),
        OpCase("Cast", "Cast", [X], attrs={"to": 11}),
        OpCase("Clip", "Clip", [X], constants={1: np.float32(-0.5), 2: np.float32(0.7)}),
        OpCase("PRelu", "PRelu", [X], constants={1: np.float32(0.25)}),
        OpCase(
            "Where",
            "Where",
            [X],
            constants={0: (X > 0).astype(np.float32), 2: np.float32(-1.5)},
        ),
        OpCase(
            "BatchNormalization",
            "BatchNormalization",
            [IMG],
            constants={
                1: _weights(_f32(3, seed=5, mean=1.0)),
                2: _weights(_f32(3, seed=6)),
                3: _weights(_f32(3, seed=7)),
                4: _weights(np.abs(_f32(3, seed=8)) + np.float32(0.5)),
            },
        ),
        OpCase("Pow", "Pow", [X], constants={1: np.float32(2.0)}),
        OpCase("Max", "Max", [X], constants={1: np.float32(0.1)}),
        OpCase("Min", "Min", [X], constants={1: np.float32(0.1)}),
        OpCase("Or", "Or", [X], constants={1: np.float32(0.0)}),
        OpCase("Mod", "Mod", [X], constants={1: np.float32(0.7)}, attrs={"fmod": 1}),
        OpCase("And", "And", [X], constants={1: np.float32(1.0)}),
        OpCase("Xor", "Xor", [X], constants={1: np.float32(1.0)}),
    ]
    for cmp in ["Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"]:
        cases.append(OpCase(cmp, cmp, [np.round(X)], constants={1: np.float32(0.0)}))
    return cases


def _linear_cases() -> list[OpCase]:
    w_t = _weights(_f32(3, 5, seed=10, mean=0.4))
    bias = _weights(_f32(3, seed=11))
    conv_w = _weights(_f32(6, 3, 3, 3, seed=12, mean=0.2))
    conv_wg = _weights(_f32(6, 1, 2, 2, seed=13))
    conv1d_w = _weights(_f32(5, 2, 3, seed=14))
    gemm = {"transB": 1}
    conv = {"kernel_shape": [3, 3], "pads": [1, 0, 1, 2], "strides": [1, 2]}
    return [
        OpCase("Gemm", "Gemm", [MAT], {1: w_t, 2: bias}, gemm),
        OpCase("Gemm_round", "Gemm", [MAT], {1: w_t, 2: bias}, gemm, rounding=3),
        OpCase("Gemm_out", "Gemm", [MAT], {1: w_t, 2: bias}, gemm, graph_output=True),
        OpCase("Gemm_nobias", "Gemm", [MAT], {1: w_t}, gemm, graph_output=True),
        OpCase("MatMul", "MatMul", [MAT], {1: _weights(_f32(5, 4, seed=15))}),
        OpCase(
            "MatMul_enc",
            "MatMul",
            [MAT, _f32(5, 2, seed=16)],
            encrypted=("a", "b"),
            rounding=4,
        ),
        OpCase("Conv", "Conv", [IMG], {1: conv_w, 2: bias_of(6)}, conv, rounding=4),
        OpCase("Conv_out", "Conv", [IMG], {1: conv_w, 2: bias_of(6)}, conv, graph_output=True),
        OpCase(
            "Conv_group",
            "Conv",
            [IMG[:, :2]],
            {1: conv_wg},
            {"kernel_shape": [2, 2], "group": 2, "strides": [2, 2]},
        ),
        OpCase(
            "Conv1d",
            "Conv",
            [SEQ[:, :2]],
            {1: conv1d_w},
            {"kernel_shape": [3], "pads": [1, 1], "strides": [2]},
        ),
    ]


def bias_of(n: int) -> QuantizedArray:
    """A float32 bias quantized as a weight."""
    return _weights(_f32(n, seed=20 + n))


def _elementwise_cases() -> list[OpCase]:
    a, b = X, _f32(4, 3, 5, seed=30, mean=0.5)
    denom = np.sign(b) * (np.abs(b) + np.float32(0.3))
    enc = ("a", "b")
    cases = []
    for op in ["Add", "Sub", "Mul", "Div"]:
        second = denom if op == "Div" else b
        cases += [
            OpCase(f"{op}_enc", op, [a, second], encrypted=enc, rounding=3),
            OpCase(f"{op}_enc_out", op, [a, second], encrypted=enc, graph_output=True),
            OpCase(f"{op}_const", op, [a], {1: np.float32(1.5)}),
            OpCase(f"{op}_fused", op, [a, second]),
        ]
    return cases


def _pooling_cases() -> list[OpCase]:
    pool = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 0, 1]}
    return [
        OpCase("AvgPool", "AveragePool", [IMG], attrs={**pool, "count_include_pad": 1}),
        OpCase(
            "AvgPool_ceil",
            "AveragePool",
            [IMG],
            attrs={**pool, "count_include_pad": 1, "ceil_mode": 1},
            rounding=3,
        ),
        OpCase("MaxPool", "MaxPool", [IMG], attrs=pool),
        # issue 13: ceil mode, count_include_pad 0, 1-D windows, dilations, global pools
        OpCase(
            "AvgPool_nopadcount",
            "AveragePool",
            [IMG],
            attrs={**pool, "ceil_mode": 1},
            rounding=3,
        ),
        OpCase(
            "AvgPool1d",
            "AveragePool",
            [SEQ],
            attrs={"kernel_shape": [3], "strides": [2], "pads": [1, 0], "ceil_mode": 1},
        ),
        OpCase("MaxPool_ceil", "MaxPool", [IMG], attrs={**pool, "ceil_mode": 1}),
        OpCase(
            "MaxPool1d",
            "MaxPool",
            [SEQ],
            attrs={"kernel_shape": [2], "strides": [2], "ceil_mode": 1},
        ),
        OpCase(
            "MaxPool_dilated",
            "MaxPool",
            [IMG],
            attrs={"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]},
        ),
        OpCase("GlobalAvgPool", "GlobalAveragePool", [IMG]),
        OpCase("GlobalAvgPool_round", "GlobalAveragePool", [IMG], rounding=3),
        OpCase("GlobalAvgPool1d", "GlobalAveragePool", [SEQ]),
        OpCase("GlobalMaxPool", "GlobalMaxPool", [IMG]),
        OpCase("GlobalMaxPool1d", "GlobalMaxPool", [SEQ]),
        OpCase("ReduceMean", "ReduceMean", [X], {1: np.array([-1])}, rounding=3),
        OpCase("ReduceMean_attr", "ReduceMean", [IMG], attrs={"axes": [2, 3], "keepdims": 0}),
        OpCase("Pad", "Pad", [IMG], {1: np.array([0, 0, 1, 2, 0, 0, 2, 0])}),
        OpCase("Unfold", "Unfold", [IMG], attrs={"kernel_shape": [2, 3], "pads": [1, 0, 0, 1]}),
        OpCase("ReduceSum", "ReduceSum", [IMG], {1: np.array([2, 3])}, rounding=4),
        OpCase(
            "ReduceSum_out",
            "ReduceSum",
            [IMG],
            {1: np.array([1])},
            {"keepdims": 0},
            graph_output=True,
        ),
    ]


def _shape_cases() -> list[OpCase]:
    return [
        OpCase("Reshape", "Reshape", [IMG], {1: np.array([2, -1, 6])}),
        OpCase("Flatten", "Flatten", [IMG]),
        OpCase("Transpose", "Transpose", [IMG], attrs={"perm": [0, 2, 3, 1]}),
        OpCase("Concat", "Concat", [IMG, IMG], attrs={"axis": 1}, encrypted=("a", "b")),
        # differently quantized branches: both are brought onto the output quantizer
        OpCase(
            "Concat_mixed",
            "Concat",
            [IMG, np.float32(3.0) * _f32(2, 2, 6, 6, seed=40, mean=1.0)],
            attrs={"axis": 1},
            encrypted=("a", "b"),
        ),
        OpCase(
            "Slice",
            "Slice",
            [IMG],
            {1: np.array([1, 0]), 2: np.array([5, 6]), 3: np.array([2, 3]), 4: np.array([2, 3])},
        ),
        OpCase("Gather", "Gather", [IMG], {1: np.array([2, 0])}, {"axis": 1}),
        # torch's default exporter writes AdaptiveAvgPool2d to a larger map as GatherND on a
        # (H, W, N, C) transpose; here the index tuples address (row, channel)
        OpCase("GatherND", "GatherND", [IMG], {1: np.array([[[1, 2], [0, 0], [1, 1]]])}),
        OpCase("Squeeze", "Squeeze", [IMG[:, :1]], {1: np.array([1])}),
        OpCase("Unsqueeze", "Unsqueeze", [X], {1: np.array([1])}),
        OpCase("Expand", "Expand", [IMG[:, :1]], {1: np.array([2, 3, 6, 6])}),
        OpCase("Shape", "Shape", [IMG]),
        OpCase("ConstantOfShape", "ConstantOfShape", [np.array([2, 3])], raw_inputs=(0,)),
    ]


def _normalization_cases() -> list[OpCase]:
    return [
        OpCase("Softmax", "Softmax", [X]),
        OpCase("Softmax_axis1", "Softmax", [IMG], attrs={"axis": 1}, rounding=5),
        OpCase("Softmax_out", "Softmax", [SEQ], attrs={"axis": -1}, graph_output=True),
        OpCase(
            "LayerNorm",
            "LayerNormalization",
            [SEQ],
            {1: np.linspace(0.5, 1.5, 9, dtype=np.float32), 2: np.full(9, 0.25, np.float32)},
        ),
        OpCase(
            "LayerNorm_round",
            "LayerNormalization",
            [SEQ],
            {1: np.linspace(0.5, 1.5, 9, dtype=np.float32)},
            rounding=4,
        ),
        OpCase(
            "LayerNorm_2axes",
            "LayerNormalization",
            [IMG],
            {1: np.ones((6, 6), np.float32)},
            {"axis": -2},
            graph_output=True,
        ),
    ]


def _qat_cases() -> list[OpCase]:
    consts = {1: np.float32(0.125), 2: np.float32(2.0), 3: np.float32(4.0)}
    return [
        OpCase("BrevitasQuant", "onnx.brevitas.Quant", [X], consts),
        OpCase(
            "BrevitasQuant_narrow",
            "onnx.brevitas.Quant",
            [X],
            {**consts, 2: np.float32(0.0)},
            {"signed": 1, "narrow": 1},
        ),
    ]


CASE_BUILDERS: list[Callable[[], list[OpCase]]] = [
    _univariate_cases,
    _linear_cases,
    _elementwise_cases,
    _pooling_cases,
    _shape_cases,
    _normalization_cases,
    _qat_cases,
]
CASES: list[OpCase] = [c for build in CASE_BUILDERS for c in build()]
