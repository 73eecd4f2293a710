"""FHE compilation, simulation and execution of quantized modules with concrete-python.

Importing this package registers the FHE operations of ``QuantizedModule`` (``compile``,
``bitwidth_report``, ``forward(fhe="simulate"|"execute")``), see :mod:`fhequant.fhe.module`.
concrete-python itself is imported only when a circuit is compiled or run. The long steps
(compile, key generation, encrypted execution) report their progress on a terminal, or
everywhere after ``show_progress(True)`` (:mod:`fhequant.fhe.progress`).
"""

from __future__ import annotations

from fhequant._concrete import preserve_exit_status
from fhequant.fhe.bitwidth import BitWidthReport, analyse, check_tlu_bit_widths
from fhequant.fhe.compile import build_configuration, compile_forward
from fhequant.fhe.module import compile_module, module_bitwidth_report, run_module
from fhequant.fhe.progress import show_progress
from fhequant.fhe.run import ensure_keys, execute, simulate

__all__ = [
    "BitWidthReport",
    "analyse",
    "build_configuration",
    "check_tlu_bit_widths",
    "compile_forward",
    "compile_module",
    "ensure_keys",
    "execute",
    "module_bitwidth_report",
    "preserve_exit_status",
    "run_module",
    "show_progress",
    "simulate",
]
