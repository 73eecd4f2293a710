"""The float op functions under the names Concrete ML's ``concrete.ml.onnx.ops_impl`` uses.

Code written against the reference calls ``numpy_gemm(a, b, c, alpha=..., ...)`` and reads the
single result out of a 1-tuple. This module gives those names without a second implementation:
each function is generated from the float op registry (:data:`fhequant.onnx.ONNX_OPS`) and the
table :data:`REFERENCE_FUNCTIONS` below, which says which registry entry a reference name runs,
which of its two forms (``fn``: ONNX graph semantics; ``quant_fn``: the docs/contract.md §5.3
form calibration uses, e.g. comparisons as float64 0/1) and the reference's argument names.

The same argument names key ``constant_inputs`` of the quantized ops
(``QuantizedGemm(..., constant_inputs={"b": w, "c": bias})``): see
:data:`REFERENCE_INPUT_NAMES`.

Attributes are keyword arguments with the registry's defaults (unknown or missing required
ones raise ``OnnxImportError``); every function returns a tuple, as the reference's do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import fhequant.onnx.ops  # noqa: F401  (importing the families fills the registry)
from fhequant.onnx.registry import ONNX_OPS

__all__ = [
    "ONNX_OPS_TO_NUMPY_IMPL",
    "REFERENCE_FUNCTIONS",
    "REFERENCE_INPUT_NAMES",
    "ReferenceFunction",
]


@dataclass(frozen=True)
class ReferenceFunction:
    """One reference function name: the registry op it runs and how.

    Attributes:
        op_type: the registry key.
        args: the reference's positional argument names (``*name``: variadic).
        graph_semantics: run ``fn`` (ONNX semantics, e.g. bool comparisons) instead of
            ``quant_fn`` (docs/contract.md §5.3).
    """

    op_type: str
    args: tuple[str, ...]
    graph_semantics: bool = False


def _f(op_type: str, args: str, graph_semantics: bool = False) -> ReferenceFunction:
    return ReferenceFunction(
        op_type, tuple(a.strip() for a in args.split(",") if a.strip()), graph_semantics
    )


_UNARY_X = (
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Celu", "Cos", "Cosh", "Elu",
    "Erf", "Exp", "Floor", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "Log", "Neg",
    "Relu", "Selu", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Tan", "Tanh",
    "ThresholdedRelu",
)  # fmt: skip

#: reference function name -> what it runs (the reference's v1.9 names and argument names).
REFERENCE_FUNCTIONS: Mapping[str, ReferenceFunction] = MappingProxyType(
    {
        **{f"numpy_{op.lower()}": _f(op, "x") for op in _UNARY_X},
        "numpy_add": _f("Add", "a, b"),
        "numpy_sub": _f("Sub", "a, b"),
        "numpy_mul": _f("Mul", "a, b"),
        "numpy_div": _f("Div", "a, b"),
        "numpy_pow": _f("Pow", "a, b"),
        "numpy_max": _f("Max", "a, b"),
        "numpy_min": _f("Min", "a, b"),
        "numpy_matmul": _f("MatMul", "a, b"),
        "numpy_gemm": _f("Gemm", "a, b, c"),
        "numpy_clip": _f("Clip", "a, min, max"),
        "numpy_round": _f("Round", "a"),
        "numpy_prelu": _f("PRelu", "x, slope"),
        "numpy_softmax": _f("Softmax", "x"),
        "numpy_conv": _f("Conv", "x, w, b"),
        "numpy_avgpool": _f("AveragePool", "x"),
        "numpy_maxpool": _f("MaxPool", "x"),
        "numpy_pad": _f("Pad", "data, pads, constant_value"),
        "numpy_cast": _f("Cast", "data"),
        "numpy_batchnorm": _f("BatchNormalization", "x, scale, bias, input_mean, input_var"),
        "numpy_flatten": _f("Flatten", "x"),
        "numpy_reshape": _f("Reshape", "x, newshape"),
        "numpy_transpose": _f("Transpose", "x"),
        "numpy_reduce_sum": _f("ReduceSum", "a, axes"),
        "numpy_brevitas_quant": _f("onnx.brevitas.Quant", "x, scale, zero_point, bit_width"),
        "numpy_concatenate": _f("Concat", "*x"),
        "numpy_unsqueeze": _f("Unsqueeze", "x, axis"),
        "numpy_squeeze": _f("Squeeze", "x, axis"),
        "numpy_shape": _f("Shape", "x"),
        "numpy_constant_of_shape": _f("ConstantOfShape", "shape"),
        "numpy_slice": _f("Slice", "x, starts, ends, axes, steps"),
        "numpy_gather": _f("Gather", "x, indices"),
        "numpy_expand": _f("Expand", "x, shape"),
        "numpy_unfold": _f("Unfold", "x"),
        "numpy_onehot": _f("OneHot", "indices, depth, values"),
        "numpy_where": _f("Where", "c, t, f", graph_semantics=True),
        "numpy_where_body": _f("Where", "c, t, f"),
        "numpy_equal": _f("Equal", "x, y", graph_semantics=True),
        "numpy_equal_float": _f("Equal", "x, y"),
        "numpy_greater": _f("Greater", "x, y", graph_semantics=True),
        "numpy_greater_float": _f("Greater", "x, y"),
        "numpy_greater_or_equal": _f("GreaterOrEqual", "x, y", graph_semantics=True),
        "numpy_greater_or_equal_float": _f("GreaterOrEqual", "x, y"),
        "numpy_less": _f("Less", "x, y", graph_semantics=True),
        "numpy_less_float": _f("Less", "x, y"),
        "numpy_less_or_equal": _f("LessOrEqual", "x, y", graph_semantics=True),
        "numpy_less_or_equal_float": _f("LessOrEqual", "x, y"),
        "numpy_not": _f("Not", "x", graph_semantics=True),
        "numpy_not_float": _f("Not", "x"),
        "numpy_or": _f("Or", "a, b", graph_semantics=True),
        "numpy_or_float": _f("Or", "a, b"),
    }
)


def _reference_input_names() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for ref in REFERENCE_FUNCTIONS.values():
        out.setdefault(ref.op_type, tuple(a.lstrip("*") for a in ref.args))
    out["qonnx.custom_op.general.Quant"] = out["onnx.brevitas.Quant"]
    return out


#: ONNX op type -> the reference's names of its inputs (positional, same order as ONNX's).
REFERENCE_INPUT_NAMES: Mapping[str, tuple[str, ...]] = MappingProxyType(_reference_input_names())


def _make(name: str, ref: ReferenceFunction) -> Callable[..., tuple[Any, ...]]:
    spec = ONNX_OPS[ref.op_type]
    impl = spec.fn if ref.graph_semantics else spec.quant_fn

    def function(*inputs: Any, **attrs: Any) -> tuple[Any, ...]:
        resolved = spec.resolve_attrs(attrs, node=name)
        out = impl(*inputs, **resolved)
        return out if isinstance(out, tuple) else (out,)

    form = "ONNX graph semantics" if ref.graph_semantics else "docs/contract.md §5.3 form"
    function.__name__ = function.__qualname__ = name
    function.__module__ = __name__
    function.__doc__ = (
        f"ONNX {ref.op_type} ({form}) as a 1-tuple; positional inputs "
        f"({', '.join(ref.args)}), attributes as keywords."
    )
    return function


def _generate() -> dict[str, Callable[..., tuple[Any, ...]]]:
    functions = {name: _make(name, ref) for name, ref in REFERENCE_FUNCTIONS.items()}
    globals().update(functions)
    __all__.extend(sorted(functions))
    return functions


_FUNCTIONS = _generate()

#: ONNX op type -> the reference-named function of its §5.3 form (as the reference's dict).
ONNX_OPS_TO_NUMPY_IMPL: Mapping[str, Callable[..., tuple[Any, ...]]] = MappingProxyType(
    {
        ref.op_type: _FUNCTIONS[name]
        for name, ref in REFERENCE_FUNCTIONS.items()
        if not ref.graph_semantics and name != "numpy_where_body"
    }
    | {"Where": _FUNCTIONS["numpy_where"]}
)


def __getattr__(name: str) -> Any:  # pragma: no cover - only for type checkers' sake
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
