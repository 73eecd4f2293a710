"""fhequant: quantize floating-point models into integer-only models and run them under FHE."""

from __future__ import annotations

from fhequant import errors
from fhequant._core import __version__

__all__ = ["__version__", "errors"]
