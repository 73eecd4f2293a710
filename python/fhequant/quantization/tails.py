"""Exact streamed ``np.percentile`` near the ends of a tensor (BatchNorm's clip,
docs/contract.md §3.7, and the ``percentile`` calibration statistic).

BatchNorm calibration clips its float output to [percentile 0.1, percentile 99.9] of the
*whole* tensor (numpy's linear method) before taking min/max. Streamed, no block holds the
whole tensor, but these two percentiles only read order statistics within 0.1 % of each end:
:class:`TailSelector` keeps the smallest and largest values seen so far (a bounded buffer,
``ceil(0.001·n) + 2`` values per end), and :func:`percentile_from_tails` finishes with numpy's
own index, weight and interpolation helpers, so the result is bit-identical to
``np.percentile(whole_tensor, q)``.

The kept fraction is a parameter (``tail``, 0.001 for BatchNorm), and two selectors fed with
disjoint parts of one stream :meth:`~TailSelector.merge` exactly: the ``keep`` smallest values
of a union are among the ``keep`` smallest of each part. A selector's state is plain numbers
(:meth:`~TailSelector.dump_state`), so partial selectors travel as JSON.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import numpy as np

from fhequant.errors import QuantizationError

# numpy's own quantile helpers (numpy 1.22-1.26), so the interpolation is bit-identical.
_fb: Any = importlib.import_module("numpy.lib.function_base")

__all__ = ["TailSelector", "percentile_from_tails"]

_LINEAR = _fb._QuantileMethods["linear"]


def _ranks(n: int, percent: float) -> tuple[Any, Any, Any]:
    """numpy's (virtual index, previous index, next index) for ``percent`` of n values."""
    q = np.asanyarray(np.true_divide(np.asanyarray(percent), 100))
    virtual = np.asanyarray(_LINEAR["get_virtual_index"](n, q))
    previous, following = _fb._get_indexes(np.empty(0, dtype=np.float64), virtual, n)
    return virtual, previous, following


class TailSelector:
    """The ``keep`` smallest and largest values of a stream of arrays.

    Args:
        n_total: the number of values the stream will hold in all.
        percents: the percentiles that will be asked (each within the kept tails).
        tail: the fraction of ``n_total`` kept at each end (plus 2 values).
    """

    def __init__(
        self, n_total: int, percents: tuple[float, ...] = (0.1, 99.9), tail: float = 0.001
    ) -> None:
        self.n_total = n_total
        self.tail = tail
        self.keep = min(n_total, max(2, math.ceil(tail * n_total) + 2))
        self._check_percents(percents)
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None
        self.seen = 0

    def _check_percents(self, percents: tuple[float, ...]) -> None:
        for p in percents:
            _, previous, following = _ranks(self.n_total, p)
            for idx in (int(previous), int(following)):
                rank = idx if idx >= 0 else self.n_total + idx
                if not (rank < self.keep or rank >= self.n_total - self.keep):
                    raise QuantizationError(
                        f"percentile {p} of {self.n_total} values is not within the "
                        f"{self.keep} values kept at each end"
                    )

    def update(self, values: np.ndarray) -> None:
        """Merge one block of values."""
        flat = np.asarray(values).ravel()
        self.seen += flat.size
        low = flat if self.low is None else np.concatenate([self.low, flat])
        high = flat if self.high is None else np.concatenate([self.high, flat])
        k = self.keep
        self.low = low if low.size <= k else np.partition(low, k - 1)[:k]
        self.high = high if high.size <= k else np.partition(high, high.size - k)[-k:]

    def merge(self, other: TailSelector) -> TailSelector:
        """Fold the selector of another part of the same stream into this one (exact).

        Args:
            other: a selector with the same ``n_total`` and ``tail``, fed with other values.

        Returns:
            self.

        Raises:
            QuantizationError: the two selectors were made for different streams.
        """
        if (other.n_total, other.keep) != (self.n_total, self.keep):
            raise QuantizationError(
                f"cannot merge tails of {other.n_total} values (keeping {other.keep}) into "
                f"tails of {self.n_total} values (keeping {self.keep}); partial statistics "
                "must be made with the same total count and percentiles"
            )
        if other.low is None or other.high is None:
            return self
        k = self.keep
        if self.low is None or self.high is None:
            self.low, self.high = other.low.copy(), other.high.copy()
        else:
            low = np.concatenate([self.low, other.low])
            high = np.concatenate([self.high, other.high])
            self.low = low if low.size <= k else np.partition(low, k - 1)[:k]
            self.high = high if high.size <= k else np.partition(high, high.size - k)[-k:]
        self.seen += other.seen
        return self

    def dump_state(self) -> dict[str, Any]:
        """The selector as JSON-ready numbers (floats written exactly as float64; the kept
        values sorted, so equal selectors dump equal text)."""
        dtype = None if self.low is None else self.low.dtype.str
        return {
            "n_total": self.n_total,
            "tail": self.tail,
            "seen": self.seen,
            "dtype": dtype,
            "low": None if self.low is None else [float(v) for v in np.sort(self.low)],
            "high": None if self.high is None else [float(v) for v in np.sort(self.high)],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`dump_state` wrote (on a selector of the same n_total/tail)."""
        dtype = state["dtype"]
        self.seen = int(state["seen"])
        self.low = None if state["low"] is None else np.array(state["low"], dtype=dtype)
        self.high = None if state["high"] is None else np.array(state["high"], dtype=dtype)

    def value_at_rank(self, rank: int) -> Any:
        """The value of the given rank (0-based) in the sorted whole stream."""
        if self.low is None or self.high is None:
            raise QuantizationError("no values were given")
        if self.seen != self.n_total:
            raise QuantizationError(f"expected {self.n_total} values, got {self.seen}")
        if rank < 0:
            rank += self.n_total
        if rank < self.low.size:
            return np.sort(self.low)[rank]
        start = self.n_total - self.high.size
        if rank >= start:
            return np.sort(self.high)[rank - start]
        raise QuantizationError(f"rank {rank} is not within the kept tails")


def percentile_from_tails(selector: TailSelector, percent: float) -> Any:
    """``np.percentile(whole_stream, percent)`` (linear method) from the kept tails.

    Args:
        selector: a TailSelector fed with the whole stream.
        percent: the percentile, in [0, 100].

    Returns:
        The same value and type as numpy's percentile of the whole (flattened) stream.
    """
    virtual, previous, following = _ranks(selector.n_total, percent)
    if selector.low is None:
        raise QuantizationError("no values were given")
    dtype = selector.low.dtype
    ends = np.array(
        [selector.value_at_rank(int(previous)), selector.value_at_rank(int(following))],
        dtype=dtype,
    )
    gamma = _fb._get_gamma(virtual, previous, _LINEAR)
    prev_value = ends[np.asarray(0, dtype=np.intp)]
    next_value = ends[np.asarray(1, dtype=np.intp)]
    return _fb._lerp(prev_value, next_value, gamma)
