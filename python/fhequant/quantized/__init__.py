"""Post-training quantization: the quantized ops (``fhequant.quantized.ops``) and their registry."""

from __future__ import annotations

from fhequant.quantized.ops import *  # noqa: F403
from fhequant.quantized.ops import __all__ as _ops_all

__all__ = [*_ops_all]
