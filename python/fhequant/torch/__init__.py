"""torch front end: ONNX export (compile_torch_model and friends come later)."""

from __future__ import annotations

from fhequant.torch.export import export_to_onnx, input_names_of

__all__ = ["export_to_onnx", "input_names_of"]
