"""torch front end: ONNX export, build_quantized_module, compile_torch_model/compile_onnx_model
and compile_brevitas_qat_model (also importable from ``fhequant.torch.compile``, as in Concrete ML),
and ``NumpyModule``."""

from __future__ import annotations

from fhequant.onnx.torch_export import export_to_onnx, input_names_of
from fhequant.quantized import QuantizedModule, build_quantized_module
from fhequant.torch.brevitas import compile_brevitas_qat_model
from fhequant.torch.compile import compile_onnx_model, compile_torch_model
from fhequant.torch.numpy_module import NumpyModule

__all__ = [
    "NumpyModule",
    "QuantizedModule",
    "build_quantized_module",
    "compile_brevitas_qat_model",
    "compile_onnx_model",
    "compile_torch_model",
    "export_to_onnx",
    "input_names_of",
]
