"""Mutated JSON documents of real objects: a typed error or a working object, never an untyped
exception (issue 15; docs/contract.md §1.6 and §1.7)."""

from __future__ import annotations

import copy
import json
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhequant import (
    MinMaxQuantizationStats,
    QuantizationOptions,
    QuantizedArray,
    QuantizedModule,
    UniformQuantizationParameters,
    UniformQuantizer,
    build_quantized_module,
    errors,
    serialization,
)
from ptq_helpers import mlp

X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)


def _documents() -> dict[str, str]:
    qa = QuantizedArray(4, np.array([[0.1, -0.5], [0.7, 0.2]]), is_signed=True)
    sym = QuantizedArray(3, np.array([-1.0, 0.5, 1.0]), is_signed=True, is_symmetric=True)
    return {
        "qa": qa.dumps(),
        "sym": sym.dumps(),
        "quantizer": qa.quantizer.dumps(),
        "options": QuantizationOptions(5, is_signed=True).dumps(),
        "stats": MinMaxQuantizationStats(rmax=1.0, rmin=-1.0).dumps(),
        "params": UniformQuantizationParameters(0.1, 3, 0).dumps(),
    }


DOCS = _documents()
MODULE = build_quantized_module(mlp([4, 3, 2]), X, n_bits=4)
MODULE_DOC = MODULE.dumps()

_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["", "object", "O", "V8", "<U3", "float128", "int64", "float64", "QuantizedArray",
         "UniformQuantizer", "numpy_array", "numpy_float", "zz", "ff00"]
    ),
)  # fmt: skip
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*prefix, i))
    return out


def _set(tree: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return tree


def _delete(tree: Any, path: tuple) -> Any:
    if not path:
        return tree
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return tree


@st.composite
def _mutated(draw: Any, text: str, max_mutations: int = 3) -> str | bytes:
    kind = draw(st.sampled_from(["tree", "tree", "tree", "bytes", "deep"]))
    if kind == "bytes":
        raw = bytearray(text.encode())
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw)
    if kind == "deep":
        depth = draw(st.integers(50, 5000))
        return "[" * depth + "]" * depth
    tree = json.loads(text)
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = _paths(tree)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            tree = _set(tree, path, draw(_JSON))
        elif action == "delete":
            tree = _delete(tree, path)
        else:
            target = tree
            for key in path:
                target = target[key]
            if isinstance(target, dict):
                target[draw(st.text(max_size=4))] = draw(_JSON)
            elif isinstance(target, list):
                target.append(draw(_JSON))
    return json.dumps(tree)


def _exercise(obj: Any) -> None:
    """Use the loaded object the way a user would; typed errors only."""
    obj.dumps()
    assert obj == obj or isinstance(obj, QuantizedModule) or obj != obj
    if isinstance(obj, QuantizedArray):
        _exercise(obj.quantizer)
        if obj.values is not None:
            obj.quantizer.quant(np.asarray(obj.values))
        if obj.qvalues is not None:
            obj.quantizer.dequant(np.asarray(obj.qvalues))
        obj.update_values(np.asarray(obj.values) if obj.values is not None else np.zeros(2))
    elif isinstance(obj, UniformQuantizer):
        obj.quant(np.array([0.0, 0.5, -1.0]))
        obj.dequant(np.array([0, 1, 2]))
    elif isinstance(obj, QuantizedModule):
        obj.forward(X[:3])


def _check(text: str | bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            obj = serialization.loads(text)
        except errors.SerializationError:
            return
        try:
            _exercise(obj)
        except AttributeError:
            # a document may legitimately decode to a plain value (list, number, dict)
            assert not hasattr(obj, "dump_dict")
        except errors.FhequantError:
            pass


@pytest.mark.parametrize("name", sorted(DOCS))
def test_real_documents_load_and_work(name: str) -> None:
    obj = serialization.loads(DOCS[name])
    _exercise(obj)
    assert obj.dumps() == DOCS[name]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), name=st.sampled_from(sorted(DOCS)))
def test_mutated_quantizer_documents(data: Any, name: str) -> None:
    _check(data.draw(_mutated(DOCS[name])))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_module_documents(data: Any) -> None:
    _check(data.draw(_mutated(MODULE_DOC, max_mutations=2)))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (b"\xff\xfe{}", "UTF-8"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
        (
            '{"type_name": "numpy_array", "serialized_value": [1, 2], "dtype": "object"}',
            "object",
        ),
        (
            '{"type_name": "numpy_array", "serialized_value": [1, 2], "dtype": "V8"}',
            "V8",
        ),
        (
            '{"type_name": "numpy_array", "serialized_value": [[1], [1, 2]], "dtype": "int64"}',
            "ragged",
        ),
        (
            '{"type_name": "numpy_integer", "serialized_value": "x", "dtype": "int64"}',
            "numpy_integer",
        ),
        ('{"type_name": "onnx_model", "serialized_value": "zz"}', "ONNX"),
    ],
)
def test_hostile_documents_raise_serialization_error(text: str | bytes, where: str) -> None:
    with pytest.raises(errors.SerializationError, match=where):
        serialization.loads(text)


def test_bad_field_is_named() -> None:
    tree = json.loads(DOCS["qa"])
    tree["serialized_value"]["quantizer"]["serialized_value"]["n_bits"] = 0
    with pytest.raises(errors.SerializationError, match="n_bits") as info:
        serialization.loads(json.dumps(tree))
    assert "$.serialized_value.quantizer" in str(info.value)
    tree = json.loads(DOCS["qa"])
    tree["serialized_value"]["qvalues"]["serialized_value"] = [1, 2, 3]
    with pytest.raises(errors.SerializationError, match="shape"):
        serialization.loads(json.dumps(tree))
    module = copy.deepcopy(json.loads(MODULE_DOC))
    assert serialization.loads(json.dumps(module)).forward(X[:2]).shape == (2, 2)
