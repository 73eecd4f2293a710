"""How the partial calibration statistics of two row ranges merge (one function per kind).

A distributed calibration pass computes, on every partition, the statistics the local walk
gathers block by block, and the client folds the partials **in partition order** with the
functions below. Each is the exact continuation of the local fold: the local walk merges the
blocks of a pass left to right with the same operation (``np.minimum``/``np.maximum`` for the
float extremes, Python ``min``/``max`` for the tensor ranges, ``|`` for integer presence, a
union for the 2-decimal unique values, a bounded tail selection for BatchNorm's percentiles),
and every partition holds whole blocks of the local walk (the partitions are re-chunked on
``batch_size`` boundaries), so the folded partials are the numbers of the local walk.

This module is the one place the distributed walk merges statistics: when fhequant gains a
protocol of mergeable calibration statistics (update / merge / finalize per tensor), these
functions are the ones to point at it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fhequant.errors import DistributedError
from fhequant.quantized.percentile import TailSelector

__all__ = [
    "Extremes",
    "RoundingRange",
    "TensorRanges",
    "merge_extremes",
    "merge_presence",
    "merge_rounding_ranges",
    "merge_tails",
    "merge_tensor_ranges",
    "merge_uniques",
]


@dataclass
class Extremes:
    """min/max of float values (numpy scalars) and the dtype of the arrays they came from."""

    lo: Any = None
    hi: Any = None
    dtype: Any = None


def merge_extremes(a: Extremes, b: Extremes) -> Extremes:
    """``np.minimum``/``np.maximum`` of two extremes (either may be empty), as the walk's fold."""
    if a.lo is None:
        return Extremes(b.lo, b.hi, b.dtype if b.dtype is not None else a.dtype)
    if b.lo is None:
        return a
    return Extremes(np.minimum(a.lo, b.lo), np.maximum(a.hi, b.hi), b.dtype)


def merge_presence(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Which integers of a table range occur: the union (``|``) of two presence masks."""
    if a is None:
        return b
    if b is None:
        return a
    return a | b


def merge_tails(a: TailSelector | None, b: TailSelector | None) -> TailSelector | None:
    """The kept smallest/largest values of two tail selectors of the same stream: the values
    a single selector fed with both streams keeps."""
    if a is None:
        return b
    if b is None:
        return a
    if a.n_total != b.n_total:
        raise DistributedError(
            f"tail selectors of streams of {a.n_total} and {b.n_total} values do not merge"
        )
    merged = TailSelector(a.n_total)
    k = merged.keep
    # the k smallest (largest) values of both streams are among the k kept by each
    low = _concat(a.low, b.low)
    high = _concat(a.high, b.high)
    merged.low = low if low is None or low.size <= k else np.partition(low, k - 1)[:k]
    merged.high = high if high is None or high.size <= k else np.partition(high, high.size - k)[-k:]
    merged.seen = a.seen + b.seen
    return merged


def _concat(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return b if a is None else a
    return np.concatenate([a, b])


def merge_uniques(a: Any, b: Any) -> Any:
    """Sorted union of two arrays of 2-decimal unique values (None: none seen)."""
    if a is None or b is None:
        return b if a is None else a
    return np.union1d(a, b)


@dataclass
class RoundingRange:
    """The accumulator range of the first uncalibrated rounding point of an op."""

    pending: str | None = None
    lo: int | None = None
    hi: int | None = None


def merge_rounding_ranges(a: RoundingRange, b: RoundingRange) -> RoundingRange:
    """The range of one rounding point over two row ranges (the same point on both)."""
    if a.pending is None:
        return b
    if b.pending is None:
        return a
    if a.pending != b.pending:
        raise DistributedError(
            f"partitions disagree on the next rounding point to calibrate ({a.pending!r} and "
            f"{b.pending!r})"
        )
    assert a.lo is not None and a.hi is not None and b.lo is not None and b.hi is not None
    return RoundingRange(a.pending, min(a.lo, b.lo), max(a.hi, b.hi))


@dataclass
class TensorRanges:
    """The value range (``vmin``/``vmax``) and stored integer range (``qmin``/``qmax``) of a
    walk tensor over some rows."""

    vmin: Any = None
    vmax: Any = None
    qmin: int | None = None
    qmax: int | None = None


def _fold(a: Any, b: Any, pick: Any) -> Any:
    return b if a is None else a if b is None else pick(a, b)


def merge_tensor_ranges(a: TensorRanges, b: TensorRanges) -> TensorRanges:
    """Python ``min``/``max`` of two tensor ranges, as ``WalkStore`` folds its blocks."""
    return TensorRanges(
        _fold(a.vmin, b.vmin, min),
        _fold(a.vmax, b.vmax, max),
        _fold(a.qmin, b.qmin, min),
        _fold(a.qmax, b.qmax, max),
    )
