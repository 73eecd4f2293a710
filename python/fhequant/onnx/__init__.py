"""ONNX import: pre-processing, the float op registry and ``NumpyModule``.

* ``NumpyModule(model)`` runs an ONNX graph in numpy (see ``fhequant.onnx.module``).
* ``ONNX_OPS`` maps each supported op type to its ``OpSpec`` (see ``fhequant.onnx.registry``).
* ``SUPPORTED_OPS`` is the sorted list of supported op types.
"""

from __future__ import annotations

import fhequant.onnx.ops  # noqa: F401  (importing the families fills the registry)
from fhequant.onnx.module import GraphNode, NumpyModule
from fhequant.onnx.opsets import MAX_OPSET, MIN_OPSET
from fhequant.onnx.preprocess import (
    QUANT_OPS,
    Preprocessed,
    load_model,
    preprocess,
)
from fhequant.onnx.registry import ONNX_OPS, REQUIRED, InputSpec, OpSpec

SUPPORTED_OPS: list[str] = sorted(ONNX_OPS)

__all__ = [
    "MAX_OPSET",
    "MIN_OPSET",
    "ONNX_OPS",
    "QUANT_OPS",
    "REQUIRED",
    "SUPPORTED_OPS",
    "GraphNode",
    "InputSpec",
    "NumpyModule",
    "OpSpec",
    "Preprocessed",
    "load_model",
    "preprocess",
]
