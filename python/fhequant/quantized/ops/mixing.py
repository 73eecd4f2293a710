"""``QuantizedMixingOp``: the base of the non-fusable ops that mix encrypted values and may
round their integer accumulators (docs/contract.md §2.4)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fhequant.errors import QuantizedOpError
from fhequant.quantized.exec import executor_for, is_tracer
from fhequant.quantized.ops.base import QuantizedOp
from fhequant.quantized.ops.rounding import (
    compute_bits_precision,
    normalize_rounding_threshold_bits,
)

__all__ = ["QuantizedMixingOp"]


class QuantizedMixingOp(QuantizedOp):
    """A non-fusable op mixing encrypted values; it can round its accumulators
    (docs/contract.md §2.4).

    Args:
        *args: as for QuantizedOp.
        rounding_threshold_bits: None, an int or {"n_bits": k, "method": ...}.
        **kwargs: as for QuantizedOp.
    """

    is_mixing: ClassVar[bool] = True

    def __init__(self, *args: Any, rounding_threshold_bits: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rounding_threshold_bits = rounding_threshold_bits
        self.lsbs_to_remove: dict[str, int] = {}

    @property
    def rounding_threshold_bits(self) -> Any:
        """None or {"n_bits": k, "method": Exactness}; assigning normalises (§2.4)."""
        return self._rounding_threshold_bits

    @rounding_threshold_bits.setter
    def rounding_threshold_bits(self, value: Any) -> None:
        self._rounding_threshold_bits = normalize_rounding_threshold_bits(value, self._label())

    def can_fuse(self) -> bool:
        """Mixing ops never fuse."""
        return False

    def _fusable(self, calibrate_rounding: bool) -> bool:
        """Whether the accumulator may stay inside a fused executor call: no debug tracking,
        no rounding to calibrate and no observer of the rounding points (streamed
        calibration gathers the accumulator ranges at ``cnp_round``)."""
        return (
            self._value_tracker() is None
            and not (calibrate_rounding and self.rounding_threshold_bits is not None)
            and not executor_for().observes_rounding
        )

    def _rounding(self, rounding_operation_id: str) -> tuple[int, Any]:
        """(lsbs_to_remove, exactness) that ``cnp_round`` applies to this accumulator."""
        lsbs = self.lsbs_to_remove.get(rounding_operation_id, 0)
        method = (
            self.rounding_threshold_bits["method"]
            if self.rounding_threshold_bits is not None
            else None
        )
        return lsbs, method

    def cnp_round(
        self,
        x: Any,
        calibrate_rounding: bool,
        rounding_operation_id: str = "single_rounding_op",
    ) -> Any:
        """Round an integer accumulator to the rounding threshold (docs/contract.md §2.4).

        Args:
            x: the int64 accumulator (array or tracer).
            calibrate_rounding: update lsbs_to_remove from the range of x first.
            rounding_operation_id: which accumulator of the op this is.

        Returns:
            x with its lsbs_to_remove low bits rounded (ties up), or x unchanged.
        """
        if calibrate_rounding and self.rounding_threshold_bits is not None:
            if is_tracer(x):
                raise QuantizedOpError(
                    f"{self._label()}: rounding cannot be calibrated while tracing; calibrate "
                    "on clear data first"
                )
            arr = np.asarray(x)
            width = compute_bits_precision(int(arr.min()), int(arr.max()))
            target = int(self.rounding_threshold_bits["n_bits"])
            prev = self.lsbs_to_remove.get(rounding_operation_id, 0)
            self.lsbs_to_remove[rounding_operation_id] = max(prev, width - target)
        lsbs, method = self._rounding(rounding_operation_id)
        ex = self.executor(x)
        ex.rounding_point(self, rounding_operation_id, x)
        if lsbs > 0:
            x = ex.round_bit_pattern(x, lsbs, method)
        return x
