"""fhequant: quantize floating-point models into integer-only models and run them under FHE."""

from __future__ import annotations

from fhequant import errors, serialization
from fhequant._concrete import preserve_exit_status
from fhequant._core import __version__
from fhequant.quantization import (
    STABILITY_CONST,
    MinMaxQuantizationStats,
    QuantizationOptions,
    QuantizedArray,
    TorchUniformQuantizer,
    UniformQuantizationParameters,
    UniformQuantizer,
    fill_from_kwargs,
)
from fhequant.quantized import QuantizedModule, build_quantized_module
from fhequant.torch.brevitas import compile_brevitas_qat_model
from fhequant.torch.compile import compile_onnx_model, compile_torch_model

__all__ = [
    "STABILITY_CONST",
    "MinMaxQuantizationStats",
    "QuantizationOptions",
    "QuantizedArray",
    "QuantizedModule",
    "TorchUniformQuantizer",
    "UniformQuantizationParameters",
    "UniformQuantizer",
    "__version__",
    "build_quantized_module",
    "compile_brevitas_qat_model",
    "compile_onnx_model",
    "compile_torch_model",
    "errors",
    "fill_from_kwargs",
    "preserve_exit_status",
    "serialization",
]
