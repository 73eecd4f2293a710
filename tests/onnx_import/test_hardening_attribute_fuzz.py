"""Fuzzing the attributes of single-node models against onnxruntime (issue 15).

Each example takes a valid one-node model of a supported op, mutates one to three of its
attributes (hostile integers and floats, wrong lengths, wrong types, unknown strings, a
dropped required attribute, an unknown attribute) and runs it through ``NumpyModule``. The
outcome must be a typed error (a FhequantError) or the result onnxruntime computes for the
same model; an untyped exception, a different result, or a result where onnxruntime
refuses the model ("lenient") fails.

What it found (1,500 examples before the fixes): flags outside {0, 1} (keepdims, ceil_mode,
fmod, ...) read differently from onnxruntime, empty window-geometry lists taken as the
defaults, out-of-range axes (Flatten, Concat, LayerNormalization: a MemoryError), Split sizes
that do not add up, ConvTranspose output_padding >= stride and pads larger than the output.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from fhequant.errors import FhequantError
from fhequant.onnx import NumpyModule
from onnx_testing import run_ort

RNG = np.random.default_rng(15)


def _f(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def _i(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# op, graph inputs, initializers (in node input order after the graph inputs), attributes,
# opset, number of outputs
BASES: list[tuple[str, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any], int, int]] = [
    (
        "Conv",
        {"x": _f(1, 2, 5, 5)},
        {"w": _f(2, 2, 3, 3), "b": _f(2)},
        {"pads": [1, 1, 1, 1], "strides": [1, 1], "dilations": [1, 1], "group": 1},
        14,
        1,
    ),
    (
        "ConvTranspose",
        {"x": _f(1, 2, 3, 3)},
        {"w": _f(2, 1, 2, 2)},
        {"strides": [2, 2], "pads": [0, 0, 0, 0], "output_padding": [0, 0], "group": 1},
        14,
        1,
    ),
    (
        "AveragePool",
        {"x": _f(1, 2, 5, 5)},
        {},
        {"kernel_shape": [2, 2], "strides": [1, 1], "pads": [0, 0, 0, 0], "ceil_mode": 0},
        14,
        1,
    ),
    (
        "MaxPool",
        {"x": _f(1, 2, 5, 5)},
        {},
        {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
        14,
        1,
    ),
    (
        "BatchNormalization",
        {"x": _f(2, 3, 4)},
        {"s": _f(3), "bias": _f(3), "m": _f(3), "v": np.abs(_f(3)) + 0.5},
        {"epsilon": 1e-5, "momentum": 0.9},
        14,
        1,
    ),
    ("Celu", {"x": _f(3, 4)}, {}, {"alpha": 1.0}, 14, 1),
    ("Concat", {"x": _f(2, 3)}, {"y": _f(2, 3)}, {"axis": 1}, 14, 1),
    ("Elu", {"x": _f(3, 4)}, {}, {"alpha": 1.0}, 14, 1),
    ("Flatten", {"x": _f(2, 3, 4)}, {}, {"axis": 1}, 14, 1),
    ("Gather", {"x": _f(3, 4)}, {"i": _i([0, 2])}, {"axis": 1}, 14, 1),
    (
        "Gemm",
        {"x": _f(2, 3)},
        {"w": _f(3, 4), "c": _f(4)},
        {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
        14,
        1,
    ),
    ("HardSigmoid", {"x": _f(3, 4)}, {}, {"alpha": 0.2, "beta": 0.5}, 14, 1),
    (
        "LayerNormalization",
        {"x": _f(2, 3, 4)},
        {"s": _f(4)},
        {"axis": -1, "epsilon": 1e-5},
        17,
        1,
    ),
    ("LeakyRelu", {"x": _f(3, 4)}, {}, {"alpha": 0.01}, 14, 1),
    ("LogSoftmax", {"x": _f(3, 4)}, {}, {"axis": -1}, 14, 1),
    ("Softmax", {"x": _f(3, 4)}, {}, {"axis": -1}, 14, 1),
    ("Mod", {"x": _f(3, 4)}, {"y": _f(3, 4)}, {"fmod": 1}, 14, 1),
    ("Pad", {"x": _f(2, 3)}, {"p": _i([0, 1, 1, 0])}, {"mode": "constant"}, 14, 1),
    ("ReduceMean", {"x": _f(2, 3, 4)}, {}, {"axes": [1], "keepdims": 1}, 14, 1),
    ("ReduceMax", {"x": _f(2, 3, 4)}, {}, {"axes": [2], "keepdims": 0}, 14, 1),
    ("ReduceSum", {"x": _f(2, 3, 4)}, {"a": _i([1])}, {"keepdims": 1}, 14, 1),
    ("Selu", {"x": _f(3, 4)}, {}, {"alpha": 1.67, "gamma": 1.05}, 14, 1),
    ("ThresholdedRelu", {"x": _f(3, 4)}, {}, {"alpha": 1.0}, 14, 1),
    ("Split", {"x": _f(4, 6)}, {"sp": _i([2, 4])}, {"axis": 1}, 14, 2),
    ("Transpose", {"x": _f(2, 3, 4)}, {}, {"perm": [1, 0, 2]}, 14, 1),
    ("Reshape", {"x": _f(2, 3, 4)}, {"sh": _i([2, 12])}, {"allowzero": 0}, 14, 1),
    ("Shape", {"x": _f(2, 3, 4)}, {}, {"start": 1, "end": 3}, 15, 1),
    ("Cast", {"x": _f(3, 4)}, {}, {"to": int(TensorProto.DOUBLE)}, 14, 1),
]

INTS = [-(2**62), -(10**6), -5, -2, -1, 0, 1, 2, 3, 5, 10**6, 2**62]
FLOATS = [math.nan, math.inf, -math.inf, -1e38, -2.5, -1.0, 0.0, 1e-45, 0.5, 1.0, 3.0, 1e38]
STRINGS = ["", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER", "reflect", "edge", "bogus", "tanh"]
DROP = object()


def _value(kind: str) -> st.SearchStrategy[Any]:
    ints = st.sampled_from(INTS)
    by_kind: dict[str, st.SearchStrategy[Any]] = {
        "int": ints,
        "float": st.sampled_from(FLOATS),
        "ints": st.lists(ints, min_size=0, max_size=6),
        "string": st.sampled_from(STRINGS),
    }
    return by_kind[kind]


def _kind(value: Any) -> str:
    if isinstance(value, bool | int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "ints"


@st.composite
def mutated_cases(draw: st.DrawFn) -> tuple[int, dict[str, Any]]:
    index = draw(st.integers(0, len(BASES) - 1))
    attrs: dict[str, Any] = dict(BASES[index][3])
    names = sorted(attrs)
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["same kind", "same kind", "other kind", "drop", "add"]))
        if what == "add":
            attrs["bogus_attribute"] = draw(_value("int"))
            continue
        name = draw(st.sampled_from(names))
        if what == "drop":
            attrs[name] = DROP
        elif what == "same kind" and name in BASES[index][3]:
            attrs[name] = draw(_value(_kind(BASES[index][3][name])))
        else:
            attrs[name] = draw(_value(draw(st.sampled_from(["int", "float", "ints", "string"]))))
    return index, attrs


def _attribute(name: str, value: Any) -> AttributeProto:
    if isinstance(value, list) and not value:
        return helper.make_attribute(name, [], attr_type=AttributeProto.INTS)
    return helper.make_attribute(name, value)


def shape_of(inputs: dict[str, np.ndarray]) -> tuple[int, ...]:
    return next(iter(inputs.values())).shape


def _model(index: int, attrs: dict[str, Any]) -> onnx.ModelProto:
    op, inputs, inits, _, opset, n_out = BASES[index]
    outputs = [f"y{k}" for k in range(n_out)]
    node = helper.make_node(op, [*inputs, *inits], outputs, name=f"fuzz_{op}")
    node.attribute.extend(_attribute(k, v) for k, v in attrs.items() if v is not DROP)
    out_type = {"Shape": TensorProto.INT64, "Cast": TensorProto.DOUBLE}.get(op, TensorProto.FLOAT)
    to = attrs.get("to")
    if op == "Cast" and isinstance(to, int) and to in TensorProto.DataType.values():
        out_type = to  # the declared output type follows the cast
    rank = {"Shape": 1, "ReduceMax": 2, "Flatten": 2, "Reshape": 2}.get(op, len(shape_of(inputs)))
    graph = helper.make_graph(
        [node],
        "fuzz",
        [
            helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
            for k, v in inputs.items()
        ],
        [helper.make_tensor_value_info(o, out_type, [None] * rank) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def outcome(index: int, attrs: dict[str, Any]) -> tuple[str, str]:
    """("typed" | "equal" | "lenient" | "untyped" | "different", detail)."""
    model = _model(index, attrs)
    inputs = BASES[index][1]
    try:
        ours = NumpyModule(model).forward(*inputs.values())
    except FhequantError as exc:
        return "typed", type(exc).__name__
    except Exception as exc:  # the failure this test looks for
        return "untyped", f"{type(exc).__name__}: {exc}"
    try:
        ref = run_ort(model, dict(inputs))
    except Exception as exc:  # onnxruntime refuses the model
        return "lenient", type(exc).__name__
    ours_list = list(ours) if isinstance(ours, tuple) else [ours]
    if len(ours_list) != len(ref):
        return "different", f"{len(ours_list)} outputs for {len(ref)}"
    for a, b in zip(ours_list, ref, strict=True):
        a = np.asarray(a)
        if a.shape != b.shape:
            return "different", f"shape {a.shape} for {b.shape}"
        if not np.allclose(
            a.astype(np.float64), b.astype(np.float64), rtol=1e-4, atol=1e-5, equal_nan=True
        ):
            return "different", "values"
    return "equal", ""


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutated_cases())
def test_mutated_attributes_give_a_typed_error_or_onnxruntimes_result(
    case: tuple[int, dict[str, Any]],
) -> None:
    index, attrs = case
    kind, detail = outcome(index, attrs)
    assert kind in ("typed", "equal"), (kind, BASES[index][0], attrs, detail)


@pytest.mark.parametrize("index", range(len(BASES)))
def test_every_base_model_matches_onnxruntime(index: int) -> None:
    kind, detail = outcome(index, dict(BASES[index][3]))
    assert kind == "equal", (BASES[index][0], detail)
