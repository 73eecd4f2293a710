"""torch front end: ONNX export (compile_torch_model and friends come later)."""

from __future__ import annotations

from fhequant.quantized import QuantizedModule, build_quantized_module
from fhequant.torch.export import export_to_onnx, input_names_of

__all__ = ["QuantizedModule", "build_quantized_module", "export_to_onnx", "input_names_of"]
