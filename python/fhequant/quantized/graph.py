"""Graph access for the calibration walk: nodes, constant folding, split-free float matmuls.

``graph_nodes`` lists an ONNX model's nodes with Python attribute values; ``fold_constant``
evaluates a node whose inputs are all constants (docs/contract.md §4.2); ``with
use_split_independent_impl(op)`` routes an op's float evaluation through the
``split_independent_impl`` its class declares (Gemm/MatMul/Conv: the sequential matmuls of
:mod:`fhequant.quantized.float_impls`) as context, nothing set on the op, so calibration does
not depend on the batch split (docs/contract.md decision 4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from fhequant.errors import UnsupportedOpError
from fhequant.onnx import ONNX_OPS
from fhequant.quantized.exec import route_float_impl
from fhequant.quantized.ops import ONNX_OPS_TO_QUANTIZED_IMPL

__all__ = [
    "GraphNode",
    "fold_constant",
    "graph_input_names",
    "graph_nodes",
    "quantized_registry",
    "use_split_independent_impl",
]


# --- graph access ----------------------------------------------------------------------------


@dataclass
class GraphNode:
    index: int
    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]


def _attr_value(attr: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attr)
    if attr.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(value)
    if attr.type == onnx.AttributeProto.STRING:
        return value.decode("utf-8") if isinstance(value, bytes) else value
    if attr.type == onnx.AttributeProto.STRINGS:
        return tuple(v.decode("utf-8") if isinstance(v, bytes) else v for v in value)
    if attr.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
        return tuple(value)
    return value


#: Domains whose ``Quant`` node is the Brevitas / QONNX fake quantization (docs/contract.md §3.8):
#: the reference's ``onnx.brevitas`` and the ``qonnx.custom_op.general`` of brevitas >= 0.11.
BREVITAS_QUANT = "onnx.brevitas.Quant"
_QUANT_DOMAINS = ("onnx.brevitas", "qonnx.custom_op.general")


def _op_key(node: onnx.NodeProto) -> str:
    if node.domain in ("", "ai.onnx"):
        return node.op_type
    if node.domain in _QUANT_DOMAINS and node.op_type == "Quant":
        return BREVITAS_QUANT
    return f"{node.domain}.{node.op_type}"


def graph_nodes(model: onnx.ModelProto) -> list[GraphNode]:
    """The nodes of a model in ONNX order, with Python attribute values."""
    return [
        GraphNode(
            i,
            _op_key(n),
            n.name or f"{n.op_type}_{i}",
            list(n.input),
            list(n.output),
            {a.name: _attr_value(a) for a in n.attribute},
        )
        for i, n in enumerate(model.graph.node)
    ]


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that are not initializers, in order."""
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def quantized_registry() -> dict[str, Any]:
    return dict(ONNX_OPS_TO_QUANTIZED_IMPL)


def fold_constant(node: GraphNode, values: list[Any]) -> Any:
    """Evaluate a node whose inputs are all constants, in float (docs/contract.md §4.2)."""
    registry = quantized_registry()
    cls = registry.get(node.op_type)
    if cls is not None:
        spec = cls.spec()
        attrs = {**dict(spec.attr_defaults), **node.attrs}
        out = spec.impl(*values, **attrs)
    else:
        spec = ONNX_OPS.get(node.op_type)
        if spec is None:
            raise UnsupportedOpError(
                f"node {node.name!r}: op {node.op_type!r} is not supported; it cannot be "
                "folded nor quantized"
            )
        out = spec.quant_fn(*values, **spec.resolve_attrs(node.attrs, node.name))
    if isinstance(out, tuple):
        out = out[0]
    return out


# --- split-independent float evaluation -----------------------------------------------------


@contextlib.contextmanager
def use_split_independent_impl(op: Any) -> Iterator[bool]:
    """Inside the ``with`` block, route an op's float evaluation (on float arrays) through
    its class's ``split_independent_impl`` (the sequential, split-free matmul of
    Gemm/MatMul/Conv); yields whether the class declares one.

    The route is context (``route_float_impl``), not an attribute set on the op.
    """
    impl = getattr(type(op), "split_independent_impl", None)
    if impl is None:
        yield False
        return

    def routed(*inputs: Any, **attrs: Any) -> Any:
        if all(isinstance(x, np.ndarray) and x.dtype.kind == "f" for x in inputs[:2]):
            return impl(*inputs, **attrs)
        return NotImplemented

    with route_float_impl(op, routed):
        yield True
