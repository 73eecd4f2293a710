"""Observers of the executor's integer nodes: they see nodes and never compute.

Every primitive of :class:`~fhequant.quantized.exec.executor.Executor` names each integer
node it creates (``label``) together with its worst-case interval rule (``bounds``); the
rounding step of a mixing op is announced as a rounding point. An observer receives them:

* :class:`RecordingObserver` (the bit-width report, docs/contract.md §7): for each node, the
  observed range over the inputset and the worst-case range from the interval rules (an op input
  ranges over its whole integer type, or over the module input quantizer's clip range), as
  :class:`ValueRecord` rows. concrete-python gives every integer node the width of the
  smallest ``Integer`` holding its range (``fhequant.kernels.bit_width``).
* :class:`HintingObserver` (``accumulator_bounds="worst_case"``): while tracing, hints each
  node with the worst-case range recorded for the same (op, label, occurrence).
* :class:`RoundingRangeObserver` (streamed rounding calibration): the accumulator range at
  the first rounding point of an op that is not calibrated yet, over all blocks.

Recording and hinting are fed by the same executor method, so their node sequences are the
same by construction; ``requests`` / ``records`` let the tests compare them per op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fhequant import kernels as ik
from fhequant.quantized.exec.backends import fhe_module

__all__ = [
    "MAX_TLU_BIT_WIDTH",
    "HintingObserver",
    "Observer",
    "RecordingObserver",
    "RoundingRangeObserver",
    "ValueRecord",
    "observed_range",
    "type_range",
]

MAX_TLU_BIT_WIDTH = 16

#: ``bounds(worst)``: a node's worst-case (lo, hi), given ``worst(operand) -> (lo, hi)``.
Bounds = Callable[[Callable[[Any], tuple[int, int]]], tuple[int, int]]


def type_range(lo: int, hi: int) -> tuple[int, int]:
    """The range of the smallest concrete Integer type holding [lo, hi]."""
    bits = ik.bit_width(int(lo), int(hi))
    if lo < 0:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def observed_range(x: Any) -> tuple[int, int]:
    """(min, max) of an integer array as Python ints."""
    arr = np.asarray(x)
    return int(arr.min()), int(arr.max())


@dataclass
class ValueRecord:
    """One integer node of the traced graph.

    Attributes:
        op: name of the op that produced it ("<module>" for module inputs).
        label: what it is (input, constant, matmul, sum, zw_sum, accumulator, rounded, ...).
        lo: observed minimum over the inputset.
        hi: observed maximum over the inputset.
        wc_lo: worst-case minimum (interval arithmetic), None for constants.
        wc_hi: worst-case maximum, None for constants.
        feeds_tlu: whether the value is the input of a table lookup.
        lsbs_removed: for a rounded value, the low bits the rounding removes.
        pre_round_bits: for a rounded value, the observed width of the value before rounding.
        pre_round_wc_bits: the same with the worst-case range.
        product_operand_bits: for an encrypted x encrypted product, the width concrete gives
            both operands: max of their observed widths + 1. concrete computes x·y as
            ⌊(x+y)²/4⌋ - ⌊(x-y)²/4⌋: two table lookups whose input (x+y, x-y) has this width
            and whose output has the product's width.
        product_operand_wc_bits: the same with the worst-case ranges.
        elements: how many integers the node holds over the whole inputset (all rows; the
            cost report divides by the row count to get the table lookups of one sample).
    """

    op: str
    label: str
    lo: int
    hi: int
    wc_lo: int | None = None
    wc_hi: int | None = None
    feeds_tlu: bool = False
    lsbs_removed: int = 0
    pre_round_bits: int = 0
    pre_round_wc_bits: int = 0
    product_operand_bits: int = 0
    product_operand_wc_bits: int = 0
    elements: int = 0

    @property
    def bits(self) -> int:
        """Observed width (concrete's rule)."""
        return ik.bit_width(self.lo, self.hi)

    @property
    def wc_bits(self) -> int:
        """Worst-case width (the observed one for constants)."""
        if self.wc_lo is None or self.wc_hi is None:
            return self.bits
        return ik.bit_width(min(self.wc_lo, self.lo), max(self.wc_hi, self.hi))

    def width(self, worst_case: bool) -> int:
        """The width concrete will see: observed, or the hinted worst case."""
        return max(self.bits, self.wc_bits) if worst_case else self.bits


class Observer:
    """The protocol (and no-op defaults) of an executor observer.

    ``nodes``: whether it sees every integer node (then the executor composes every
    primitive from its leaves instead of calling fused kernels); ``rounding_points``:
    whether it sees the accumulators of mixing ops before their rounding (then the ops do
    not fuse their rescale either).
    """

    name = "observer"
    nodes = True
    rounding_points = False

    def node(
        self,
        op: str,
        label: str,
        value: Any,
        bounds: Bounds,
        *,
        rounded: tuple[Any, int] | None = None,
        tlu_input: Any = None,
        product_of: tuple[Any, Any] | None = None,
    ) -> Any:
        """One integer node: returns the value to use in its place (the same value, or a
        hinted one). ``rounded`` is (the value before rounding, lsbs removed) for a rounded
        node; ``tlu_input`` the input of a table lookup node; ``product_of`` the two
        encrypted operands of an encrypted product."""
        return value

    def constant(self, op: str, value: Any) -> None:
        """A clear constant node."""

    def rounding_point(self, op: Any, rounding_id: str, value: Any) -> None:
        """The accumulator ``rounding_id`` of the op object ``op``, before its rounding."""

    def op_output(self, name: str, result: Any) -> None:
        """The result of the op ``name`` (``run_op``)."""


class RecordingObserver(Observer):
    """Records every integer node with its observed and worst-case ranges."""

    name = "recording"

    def __init__(self) -> None:
        self.records: list[ValueRecord] = []
        self.outputs: dict[str, Any] = {}
        self._worst: dict[int, tuple[Any, int, int]] = {}
        self._record_of: dict[int, tuple[Any, ValueRecord]] = {}

    def set_worst(self, x: Any, lo: int, hi: int) -> None:
        """Declare the worst-case range of an array (module inputs)."""
        self._worst[id(x)] = (x, int(lo), int(hi))

    def worst(self, x: Any) -> tuple[int, int]:
        """Worst-case range of an operand: recorded, else its whole integer type."""
        hit = self._worst.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1], hit[2]
        return type_range(*observed_range(x))

    def node(
        self,
        op: str,
        label: str,
        value: Any,
        bounds: Bounds,
        *,
        rounded: tuple[Any, int] | None = None,
        tlu_input: Any = None,
        product_of: tuple[Any, Any] | None = None,
    ) -> Any:
        if tlu_input is not None:
            hit = self._record_of.get(id(tlu_input))
            if hit is not None and hit[0] is tlu_input:
                hit[1].feeds_tlu = True
        wlo, whi = (int(v) for v in bounds(self.worst))
        lo, hi = observed_range(value)
        record = ValueRecord(op, label, lo, hi, wlo, whi, elements=int(np.size(value)))
        if product_of is not None:
            widths = [ik.bit_width(*observed_range(v)) for v in product_of]
            wc_widths = [
                ik.bit_width(min(self.worst(v)[0], lo_v), max(self.worst(v)[1], hi_v))
                for v in product_of
                for lo_v, hi_v in [observed_range(v)]
            ]
            record.product_operand_bits = max(widths) + 1
            record.product_operand_wc_bits = max(wc_widths) + 1
        if rounded is not None:
            source, lsbs = rounded
            slo, shi = self.worst(source)
            xlo, xhi = observed_range(source)
            record.lsbs_removed = lsbs
            record.pre_round_bits = ik.bit_width(xlo, xhi)
            record.pre_round_wc_bits = ik.bit_width(min(slo, xlo), max(shi, xhi))
        self.records.append(record)
        self._record_of[id(value)] = (value, record)
        self.set_worst(value, min(lo, wlo), max(hi, whi))
        return value

    def constant(self, op: str, value: Any) -> None:
        self.records.append(ValueRecord(op, "constant", *observed_range(value)))

    def op_output(self, name: str, result: Any) -> None:
        self.outputs[name] = result


class HintingObserver(Observer):
    """Hints each traced node with the worst-case range recorded for it.

    Args:
        records: the RecordingObserver's records; with none, nothing is hinted.
    """

    name = "hinting"

    def __init__(self, records: Sequence[ValueRecord] = ()) -> None:
        self._hints: dict[tuple[str, str, int], tuple[int, int]] = {}
        seen: dict[tuple[str, str], int] = {}
        for rec in records:
            if rec.wc_lo is None or rec.wc_hi is None:
                continue
            k = seen.get((rec.op, rec.label), 0)
            seen[(rec.op, rec.label)] = k + 1
            self._hints[(rec.op, rec.label, k)] = (
                min(rec.wc_lo, rec.lo),
                max(rec.wc_hi, rec.hi),
            )
        self._count: dict[tuple[str, str], int] = {}
        #: every node seen, as (op, label), in order
        self.requests: list[tuple[str, str]] = []

    def node(
        self,
        op: str,
        label: str,
        value: Any,
        bounds: Bounds,
        *,
        rounded: tuple[Any, int] | None = None,
        tlu_input: Any = None,
        product_of: tuple[Any, Any] | None = None,
    ) -> Any:
        k = self._count.get((op, label), 0)
        self._count[(op, label)] = k + 1
        self.requests.append((op, label))
        wc = self._hints.get((op, label, k))
        if wc is None:
            return value
        return fhe_module().hint(value, can_store=np.array(wc, dtype=np.int64))


class RoundingRangeObserver(Observer):
    """The accumulator range at the first uncalibrated rounding point of one op.

    A streamed calibration pass runs the op over every block under this observer; the
    rounding points already in ``op.lsbs_to_remove`` round as usual, the others are left
    unrounded, and the range of the first of them is gathered (``pending``, ``lo``, ``hi``).
    """

    name = "rounding"
    nodes = False
    rounding_points = True

    def __init__(self, op: Any) -> None:
        self.op = op
        self.pending: str | None = None
        self.lo: int | None = None
        self.hi: int | None = None

    def rounding_point(self, op: Any, rounding_id: str, value: Any) -> None:
        if op is not self.op or rounding_id in op.lsbs_to_remove:
            return
        if self.pending is None:
            self.pending = rounding_id
        if self.pending == rounding_id:
            lo, hi = observed_range(value)
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
