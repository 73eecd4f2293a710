"""torch front end: ONNX export, compile_torch_model and compile_onnx_model."""

from __future__ import annotations

from fhequant.torch.compile import compile_onnx_model, compile_torch_model
from fhequant.torch.export import export_to_onnx, input_names_of

__all__ = ["compile_onnx_model", "compile_torch_model", "export_to_onnx", "input_names_of"]
