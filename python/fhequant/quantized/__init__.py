"""Post-training quantization.

* ``fhequant.quantized.ops``: the quantized ops and ``ONNX_OPS_TO_QUANTIZED_IMPL``;
* ``build_quantized_module`` / ``quantize_module``: the (streamed) calibration walk;
* ``QuantizedModule``: the calibrated integer model, its clear forward and JSON form.
"""

from __future__ import annotations

from fhequant.quantized.build import build_quantized_module
from fhequant.quantized.calibration import (
    PostTrainingAffineQuantization,
    PostTrainingQATImporter,
    quantize_module,
)
from fhequant.quantized.module import QuantizedModule
from fhequant.quantized.n_bits import BitWidths, resolve_n_bits
from fhequant.quantized.ops import *  # noqa: F403
from fhequant.quantized.ops import __all__ as _ops_all

__all__ = [
    *_ops_all,
    "BitWidths",
    "PostTrainingAffineQuantization",
    "PostTrainingQATImporter",
    "QuantizedModule",
    "build_quantized_module",
    "quantize_module",
    "resolve_n_bits",
]
