"""``NumpyModule`` where Concrete ML has it (``concrete.ml.torch.numpy_module``); it is
:class:`fhequant.onnx.NumpyModule`, which takes a torch module with a dummy input as well as
an ONNX model."""

from __future__ import annotations

from fhequant.onnx.module import NumpyModule

__all__ = ["NumpyModule"]
