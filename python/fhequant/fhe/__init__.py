"""FHE compilation, simulation and execution of quantized modules with concrete-python."""

from __future__ import annotations

from fhequant._concrete import preserve_exit_status
from fhequant.fhe.bitwidth import BitWidthReport, analyse, check_tlu_bit_widths
from fhequant.fhe.compile import build_configuration, compile_forward
from fhequant.fhe.run import execute, simulate

__all__ = [
    "BitWidthReport",
    "analyse",
    "build_configuration",
    "check_tlu_bit_widths",
    "compile_forward",
    "execute",
    "preserve_exit_status",
    "simulate",
]
