"""Reading ONNX protobufs: op keys, attributes and tensors as Python/numpy values."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fhequant.errors import OnnxImportError

DEFAULT_DOMAINS = ("", "ai.onnx")


def op_key(node: onnx.NodeProto) -> str:
    """The registry key of a node: op_type, or "domain.op_type" off the default domain."""
    if node.domain in DEFAULT_DOMAINS:
        return node.op_type
    return f"{node.domain}.{node.op_type}"


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A name for messages: the node name, or its type and position when unnamed."""
    return node.name or f"{node.op_type}#{index}"


def _text(value: Any, name: str) -> Any:
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OnnxImportError(f"attribute {name!r} is not valid UTF-8 text") from exc


def attr_value(attr: onnx.AttributeProto) -> Any:
    """An attribute as a Python value: str, int, float, tuple, or numpy array for tensors."""
    try:
        value = helper.get_attribute_value(attr)
        if attr.type == onnx.AttributeProto.TENSOR:
            return numpy_helper.to_array(value)
        if attr.type == onnx.AttributeProto.TENSORS:
            return tuple(numpy_helper.to_array(v) for v in value)
    except Exception as exc:
        raise OnnxImportError(f"attribute {attr.name!r} cannot be read: {exc}") from exc
    if attr.type == onnx.AttributeProto.STRING:
        return _text(value, attr.name)
    if attr.type == onnx.AttributeProto.STRINGS:
        return tuple(_text(v, attr.name) for v in value)
    if attr.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
        return tuple(value)
    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise OnnxImportError(f"attribute {attr.name!r} holds a subgraph: not supported")
    return value


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """All attributes set on a node."""
    return {a.name: attr_value(a) for a in node.attribute}


def to_array(tensor: onnx.TensorProto) -> np.ndarray:
    """An initializer as a numpy array (external data must already be loaded)."""
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:
        raise OnnxImportError(f"initializer {tensor.name!r} cannot be read: {exc}") from exc


def from_array(value: np.ndarray, name: str) -> onnx.TensorProto:
    """A numpy array as a named TensorProto."""
    return numpy_helper.from_array(np.asarray(value), name=name)


def default_opset(model: onnx.ModelProto) -> int | None:
    """The version of the default ONNX domain imported by the model, if any."""
    for op in model.opset_import:
        if op.domain in DEFAULT_DOMAINS:
            return int(op.version)
    return None
