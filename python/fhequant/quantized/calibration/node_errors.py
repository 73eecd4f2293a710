"""Errors raised inside a node's float computation during calibration, named.

A numpy error from an op's float function (``cannot reshape array of size 344832 into shape
(1,256)``) says nothing of where it comes from. :func:`node_failure` turns it into a typed
error naming the ONNX node and its op type, the original as cause; a Reshape whose target
shape fixes the batch dimension (a model exported from a batch-1 example without a dynamic
batch axis) gets the way to export it with one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fhequant.errors import FhequantError, QuantizedOpError, ShapeError

__all__ = ["node_failure"]

_SHAPE_WORDS = ("shape", "broadcast", "reshape", "dimension", "axis", "size")


def _target_shape(node: Any, constants: Mapping[str, Any]) -> tuple[int, ...] | None:
    if len(node.inputs) < 2:
        return None
    value = constants.get(node.inputs[1])
    value = getattr(value, "values", value)
    if value is None:
        return None
    try:
        arr = np.asarray(value)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            return None
        return tuple(int(v) for v in arr)
    except (TypeError, ValueError):
        return None


def _reshape_hint(node: Any, constants: Mapping[str, Any], rows: int | None) -> str:
    target = _target_shape(node, constants)
    if not target or target[0] in (0, -1):
        return ""
    batch = f" but a calibration batch has {rows} rows" if rows else ""
    return (
        f"; its target shape {target} fixes the batch dimension to {target[0]}{batch}: the "
        "model was exported from a fixed-size example without a dynamic batch axis. Export "
        "it with one, e.g. torch.onnx.export(model, x, path, input_names=['x'], "
        "dynamic_axes={'x': {0: 'batch'}}) (fhequant.torch.export_to_onnx does this), or "
        "reshape with a free batch dimension in the model (x.flatten(1) or "
        "x.reshape(x.shape[0], -1))"
    )


def node_failure(
    node: Any, exc: Exception, constants: Mapping[str, Any], rows: int | None = None
) -> FhequantError:
    """The typed error for an exception raised while calibrating ``node``.

    Args:
        node: the graph node (``name``, ``op_type``, ``inputs``).
        exc: the exception (not a FhequantError).
        constants: the folded constants of the graph (a Reshape's target shape).
        rows: the rows of the first calibration block, for the message.

    Returns:
        A ShapeError (a shape problem) or a QuantizedOpError naming the node; raise it
        ``from exc``.
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > 300:
        text = text[:297] + "..."
    what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    where = f"node {node.name!r} ({node.op_type}) failed during calibration: {what}"
    is_shape = isinstance(exc, (ValueError, IndexError)) and any(
        word in text.lower() for word in _SHAPE_WORDS
    )
    if node.op_type == "Reshape" and is_shape:
        return ShapeError(where + _reshape_hint(node, constants, rows))
    if is_shape:
        return ShapeError(
            where + "; check the model's input shapes against the calibration data (a shape "
            "fixed at export, e.g. a batch size of 1, does not fit other batch sizes)"
        )
    return QuantizedOpError(where)
