"""What the calibration walk asks of an op: how it is calibrated and what a finished op keeps.

The passes and table paths call these through the module (``traits.clips_percentiles(op)``),
so a test can replace one for the whole walk.
"""

from __future__ import annotations

from typing import Any

from fhequant.quantization import QuantizedArray
from fhequant.quantized.ops.base import QuantizedOp

__all__ = ["clips_percentiles", "finish", "has_default_calibration"]


def has_default_calibration(op: Any) -> bool:
    """Calibration is a min/max of the float result (possibly BatchNorm's percentile clip)."""
    cls = type(op)
    if cls.calibrate is not QuantizedOp.calibrate:
        return False
    return cls._calibration_values is QuantizedOp._calibration_values or clips_percentiles(op)


def clips_percentiles(op: Any) -> bool:
    """The op's stats are on the raw output clipped to its 0.1/99.9 percentiles (BatchNorm)."""
    return bool(type(op).clips_percentiles)


def finish(op: Any, quant: Any) -> None:
    """A graph-output op takes the params of its q_impl result (docs/contract.md §4.2
    step 4)."""
    if op.produces_graph_output and isinstance(quant, QuantizedArray):
        op.output_quant_stats = quant.quantizer.quant_stats
        op.output_quant_params = quant.quantizer.quant_params
