"""The op families; importing this package fills ``fhequant.onnx.registry.ONNX_OPS``."""

from __future__ import annotations

from fhequant.onnx.ops import (
    activations,
    conv,
    elementwise,
    linear,
    logic,
    pooling,
    qat,
    reduce,
    shape,
)

__all__ = [
    "activations",
    "conv",
    "elementwise",
    "linear",
    "logic",
    "pooling",
    "qat",
    "reduce",
    "shape",
]
