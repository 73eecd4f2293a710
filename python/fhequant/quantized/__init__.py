"""Post-training quantization.

* ``fhequant.quantized.ops``: the quantized ops and ``ONNX_OPS_TO_QUANTIZED_IMPL``;
* ``build_quantized_module`` / ``quantize_module``: the (streamed) calibration walk;
* ``QuantizedModule``: the calibrated integer model, its clear forward and JSON form;
* ``PostTrainingAffineQuantization`` / ``PostTrainingQATImporter``: Concrete ML's converter
  classes (``.quantize_module(*calibration_data)``) on the same walk.

As Concrete ML's ``concrete.ml.quantization`` does, ``fhequant.quantization`` also exposes the
names of ``__all__`` below (``fhequant.quantization.QuantizedGemm``...): the quantizer layer
cannot import this one, so this package publishes them there when it is imported.
"""

from __future__ import annotations

from fhequant import quantization as _quantization
from fhequant.quantized.build import build_quantized_module
from fhequant.quantized.calibration import quantize_module
from fhequant.quantized.module import QuantizedModule
from fhequant.quantized.n_bits import BitWidths, resolve_n_bits
from fhequant.quantized.ops import *  # noqa: F403
from fhequant.quantized.ops import __all__ as _ops_all
from fhequant.quantized.post_training import (
    ONNXConverter,
    PostTrainingAffineQuantization,
    PostTrainingQATImporter,
)

__all__ = [
    *_ops_all,
    "BitWidths",
    "ONNXConverter",
    "PostTrainingAffineQuantization",
    "PostTrainingQATImporter",
    "QuantizedModule",
    "build_quantized_module",
    "quantize_module",
    "resolve_n_bits",
]


def _publish_in_quantization() -> None:
    """Expose this package's public names as attributes of ``fhequant.quantization`` (the
    names that package defines itself win)."""
    for name in __all__:
        if not hasattr(_quantization, name):
            setattr(_quantization, name, globals()[name])


_publish_in_quantization()
