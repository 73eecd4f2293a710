"""The general JSON serializer: encodings of docs/contract.md §1.6, the registry, the versioned
envelope."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fhequant import QuantizedArray, errors, serialization
from fhequant.serialization import FORMAT_VERSION, VERSION_KEY, Serializable


def test_text_format() -> None:
    text = serialization.dumps({"a": [1.5, float("inf"), float("nan"), -0.0], 3: "é"})
    assert text == '{"a": [1.5, Infinity, NaN, -0.0], "3": "\\u00e9"}'


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (np.int64(-3), {"type_name": "numpy_integer", "serialized_value": -3, "dtype": "int64"}),
        (np.uint8(7), {"type_name": "numpy_integer", "serialized_value": 7, "dtype": "uint8"}),
        (
            np.float32(0.1),
            {
                "type_name": "numpy_float",
                "serialized_value": 0.10000000149011612,
                "dtype": "float32",
            },
        ),
        (
            np.float64(0.1),
            {"type_name": "numpy_float", "serialized_value": 0.1, "dtype": "float64"},
        ),
        (
            np.array([[1, 2]], dtype=np.int32),
            {"type_name": "numpy_array", "serialized_value": [[1, 2]], "dtype": "int32"},
        ),
        (
            np.array(2.5),
            {"type_name": "numpy_array", "serialized_value": 2.5, "dtype": "float64"},
        ),
        ((1, "a"), {"type_name": "tuple", "serialized_value": [1, "a"]}),
        ({"b", "a"}, {"type_name": "set", "serialized_value": ["a", "b"]}),
        (True, True),
        (None, None),
    ],
)
def test_value_encodings(value: Any, encoded: Any) -> None:
    assert json.loads(serialization.dumps(value)) == encoded
    back = serialization.loads(serialization.dumps(value))
    assert type(back) is type(value)
    if isinstance(value, np.ndarray):
        assert back.dtype == value.dtype and back.shape == value.shape
        np.testing.assert_array_equal(back, value)
    else:
        assert back == value


def test_nested_containers_round_trip() -> None:
    value = {"t": (np.int64(1), [np.float32(2.5), {"s": {3, 1}}]), 4: None}
    back = serialization.loads(serialization.dumps(value))
    assert back == {"t": (1, [2.5, {"s": {1, 3}}]), "4": None}
    assert type(back["t"][0]) is np.int64 and type(back["t"][1][0]) is np.float32


def test_onnx_model_round_trip() -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph)
    data = json.loads(serialization.dumps(model))
    assert data == {"type_name": "onnx_model", "serialized_value": model.SerializeToString().hex()}
    back = serialization.loads(serialization.dumps(model))
    assert isinstance(back, onnx.ModelProto)
    assert back.SerializeToString() == model.SerializeToString()


def test_exactness_round_trip() -> None:
    from concrete.fhe import Exactness

    text = serialization.dumps([Exactness.APPROXIMATE])
    assert json.loads(text)[0]["type_name"] == "Exactness"
    assert serialization.loads(text) == [Exactness.APPROXIMATE]


def test_unsupported_values_are_refused() -> None:
    with pytest.raises(errors.SerializationError, match="complex"):
        serialization.dumps(np.array([1j]))
    with pytest.raises(errors.SerializationError, match="object"):
        serialization.dumps(object())
    with pytest.raises(errors.SerializationError, match="dict key"):
        serialization.dumps({(1, 2): 3})


# --- registry -------------------------------------------------------------------------------


class _Point(Serializable):
    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x, y

    def dump_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y}

    @classmethod
    def load_dict(cls, metadata: dict[str, Any]) -> _Point:
        return cls(metadata["x"], metadata["y"])


def test_subclasses_register_and_nest() -> None:
    assert serialization.registered_classes()["_Point"] is _Point
    point = _Point(np.float32(1.5), QuantizedArray(3, np.array([0.0, 1.0])))
    text = point.dumps()
    assert text.startswith('{"type_name": "_Point", "serialized_value": {"x": {"type_name"')
    back = _Point.loads(text)
    assert type(back.x) is np.float32 and back.y == point.y
    with pytest.raises(errors.SerializationError, match="not a QuantizedArray"):
        QuantizedArray.loads(text)


def test_register_plain_class_and_conflicts() -> None:
    class Plain:
        def dump_dict(self) -> dict[str, Any]:
            return {}

        @staticmethod
        def load_dict(metadata: dict[str, Any]) -> Plain:
            return Plain()

    with pytest.raises(errors.SerializationError, match="not registered"):
        serialization.dumps(Plain())
    serialization.register_class(Plain, name="test_serialization.Plain")
    assert isinstance(serialization.loads(serialization.dumps(Plain())), Plain)
    with pytest.raises(errors.SerializationError, match="already registered"):
        serialization.register_class(_Point, name="test_serialization.Plain")
    with pytest.raises(errors.SerializationError, match="built-in"):
        serialization.register_class(_Point, name="numpy_array")


def test_class_keyword_sets_the_type_name() -> None:
    class Renamed(Serializable, type_name="test_serialization.Renamed"):
        def dump_dict(self) -> dict[str, Any]:
            return {"v": (1, 2)}

        @classmethod
        def load_dict(cls, metadata: dict[str, Any]) -> Renamed:
            assert metadata == {"v": (1, 2)}
            return cls()

    text = Renamed().dumps()
    assert text.startswith('{"type_name": "test_serialization.Renamed", ')
    assert isinstance(Renamed.loads(text), Renamed)


def test_incomplete_document() -> None:
    text = '{"type_name": "UniformQuantizationParameters", "serialized_value": {"scale": 1.0}}'
    with pytest.raises(errors.SerializationError, match="UniformQuantizationParameters"):
        serialization.loads(text)


def test_unsigned_64_bit_scalar_round_trip() -> None:
    value = np.uint64(2**64 - 1)
    back = serialization.loads(serialization.dumps(value))
    assert type(back) is np.uint64 and back == value


def test_unknown_type_name() -> None:
    with pytest.raises(errors.SerializationError, match="unknown type_name 'Nope'"):
        serialization.loads('{"type_name": "Nope", "serialized_value": {}}')


# --- versioned envelope ---------------------------------------------------------------------


def test_dump_writes_the_dumps_text_and_load_reads_both_forms() -> None:
    # docs/contract.md §1.6: dump writes the same text as dumps (byte-identical to the reference);
    # the versioned envelope (module-level documents) loads as well.
    q = QuantizedArray(4, np.array([0.25, -1.0, 3.0]), is_signed=True)
    buffer = io.StringIO()
    q.dump(buffer)
    assert buffer.getvalue() == q.dumps()
    buffer.seek(0)
    assert QuantizedArray.load(buffer) == q
    envelope = serialization.wrap_versioned(q)
    assert envelope[VERSION_KEY] == FORMAT_VERSION == 1
    assert json.dumps(envelope["content"]) == q.dumps()
    assert QuantizedArray.loads(json.dumps(envelope)) == q


@pytest.mark.parametrize("version", [0, 2, "1", None, True])
def test_unknown_versions_are_refused(version: Any) -> None:
    text = json.dumps({VERSION_KEY: version, "content": None})
    with pytest.raises(errors.SerializationError, match="format version"):
        serialization.loads(text)


def test_invalid_json() -> None:
    with pytest.raises(errors.SerializationError, match="not valid JSON"):
        serialization.loads("{")
