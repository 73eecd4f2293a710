"""The public interface of the calibration walk for other calibration engines.

A calibration engine that keeps the rows elsewhere (``fhequant.distributed`` keeps them in
partitions on Dask workers) runs the local walk's own graph visit and decisions, and replaces
only where the blocks are read. It uses the walk through these names and nothing private
(``tests/distributed/test_driver_interface.py`` fails otherwise), so a refactor of the walk
either keeps them or breaks that test:

* **walk and block hand-off**: :meth:`ModuleCalibrator.walk
  <fhequant.quantized.calibration.walk.ModuleCalibrator.walk>` visits the nodes with the
  engine's input loading and op calibration; the loading hands the graph inputs over with
  :meth:`~fhequant.quantized.calibration.walk.ModuleCalibrator.accept_inputs` (block sizes and
  whole-set ranges). The blocks of one tensor move between stores with
  :meth:`WalkStore.stored_blocks <fhequant.quantized.calibration.store.WalkStore.stored_blocks>`
  and :meth:`~fhequant.quantized.calibration.store.WalkStore.adopt_blocks`.
* **pass plan**: :meth:`OpPasses.plan <fhequant.quantized.calibration.passes.OpPasses.plan>`
  says which passes calibrate an op (:class:`PassPlan`); the local walk follows the same plan.
* **per-pass statistics**: the statistics pass is an :class:`OutputRange`, updated block by
  block, merged in row order and finalized onto the op; a rounding point is set from its
  accumulator range by :meth:`OpPasses.calibrate_rounding_point
  <fhequant.quantized.calibration.passes.OpPasses.calibrate_rounding_point>`; an op whose
  calibration is not a min/max reduction is calibrated on its whole inputs by
  :meth:`OpPasses.calibrate_whole <fhequant.quantized.calibration.passes.OpPasses.calibrate_whole>`;
  output passes read their inputs with :meth:`OpPasses.calibration_qa
  <fhequant.quantized.calibration.passes.OpPasses.calibration_qa>` and store with
  :meth:`WalkStore.store_output <fhequant.quantized.calibration.store.WalkStore.store_output>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fhequant.kernels import quant as _kernels
from fhequant.quantized.calibration import traits
from fhequant.quantized.finite import check_finite
from fhequant.quantized.percentile import TailSelector, percentile_from_tails

__all__ = ["OutputRange", "PassPlan", "union_uvalues"]


def union_uvalues(uniques: Any, values: Any) -> Any:
    """Sorted union of the 2-decimal unique values (MinMaxQuantizationStats.uvalues)."""
    batch = _kernels.rounded_unique(np.asarray(values))
    if batch is None or uniques is None:
        return batch if uniques is None else uniques
    return np.union1d(uniques, batch)


@dataclass(frozen=True)
class PassPlan:
    """Which passes calibrate one op (:meth:`OpPasses.plan`).

    Attributes:
        table: the element-wise table path applies (it may still decline once it sees the
            integers present, then the other passes run).
        statistics: the output quantizer comes from a min/max reduction of the float result
            (an :class:`OutputRange` pass); False: ``op.calibrate`` on the whole inputs.
        rounding: the op has rounding points to calibrate, one output pass each.
        releases: the variable inputs whose blocks are freed once the op is calibrated (this
            op is their last consumer).
    """

    table: bool
    statistics: bool
    rounding: bool
    releases: tuple[str, ...]


class OutputRange:
    """The statistics pass of an op: min/max of its float result, mergeable over row ranges.

    Updated block by block (:meth:`update`), merged with the range of the following rows
    (:meth:`merge`: ``np.minimum``/``np.maximum``, BatchNorm's tails, the QAT unique values),
    then :meth:`finalize` sets the op's output quantizer. The numbers are those of one pass
    over all blocks in row order, however the rows were split. It holds no reference to the
    op (partial ranges are small to ship).

    Args:
        op: the quantized op (read for its flags only).
        out: its output tensor name (for error messages).
        total_rows: the rows of the whole calibration set (sizes BatchNorm's tails).
        keep_uniques: also gather the 2-decimal unique values (QAT import).
    """

    def __init__(self, op: Any, out: str, total_rows: int, keep_uniques: bool) -> None:
        self.out = out
        self.total_rows = total_rows
        self.keep_uniques = keep_uniques
        self.raw_output = bool(op.spec().raw_output)
        self.clips = traits.clips_percentiles(op)
        self.lo: Any = None
        self.hi: Any = None
        self.dtype: Any = None
        self.tails: TailSelector | None = None
        self.uniques: Any = None
        self._first = True

    def update(self, op: Any, floats: list[Any]) -> Any:
        """Run the float op on one block of its inputs and fold the result in.

        Returns:
            The raw float result of the block.
        """
        prepared = op._prepare_inputs_with_constants(
            *floats, calibrate=True, quantize_actual_values=False
        )
        raw = op.call_impl(*prepared, **op.attrs)
        if self.raw_output:
            return raw
        arr = np.asarray(raw)
        if self._first and self.clips and (np.size(prepared[1]) > 1 or np.size(prepared[2]) > 1):
            per_row = arr.size // max(arr.shape[0], 1) if arr.ndim else 1
            self.tails = TailSelector(per_row * self.total_rows)
        self._first = False
        if arr.size == 0:
            return raw
        blo, bhi = arr.min(), arr.max()
        check_finite(blo, bhi, self.out, f"op {op.op_instance_name!r} ({type(op).__name__})")
        self.fold_extremes(blo, bhi, arr.dtype)
        if self.tails is not None:
            self.tails.update(arr)
        if self.keep_uniques:
            self.uniques = union_uvalues(self.uniques, arr)
        return raw

    def fold_extremes(self, lo: Any, hi: Any, dtype: Any) -> None:
        """Fold the min/max of more values (e.g. of the fused native kernels)."""
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
        self.dtype = dtype

    def merge(self, other: OutputRange) -> OutputRange:
        """Fold the range of the rows that follow this one's (exact); returns self."""
        if other.lo is not None:
            self.fold_extremes(other.lo, other.hi, other.dtype)
        if other.tails is not None:
            self.tails = other.tails if self.tails is None else self.tails.merge(other.tails)
        if other.uniques is not None:
            self.uniques = (
                other.uniques if self.uniques is None else np.union1d(self.uniques, other.uniques)
            )
        return self

    def finalize(self, op: Any) -> None:
        """Set the op's output quantizer from the range (clipped to BatchNorm's percentiles)."""
        if self.raw_output:
            return
        if self.lo is None:
            # every block's result is empty (a Slice of a shape that selects nothing): no
            # value to quantize; the quantizer of [0, 0] stands in
            op._set_output_quantizer(np.zeros(2))
            return
        ends = np.array([self.lo, self.hi], dtype=self.dtype)
        if self.tails is not None:
            ends = np.clip(
                ends,
                percentile_from_tails(self.tails, 0.1),
                percentile_from_tails(self.tails, 99.9),
            )
        op._set_output_quantizer(ends)
        if self.keep_uniques and op.output_quant_stats is not None:
            # QAT import: check_is_uniform_quantized needs the real uvalues
            # (docs/contract.md §1.2).
            op.output_quant_stats.uvalues = self.uniques
