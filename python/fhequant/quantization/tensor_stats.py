"""Calibration statistics as a protocol: one object per tensor, streamed and mergeable.

The calibration walk owns one :class:`TensorStatistic` per calibrated tensor (an op output, or
the weights of a Gemm / MatMul / Conv). It feeds every block of the tensor's values to
:meth:`~TensorStatistic.update` and asks :meth:`~TensorStatistic.finalize` for the range
``[lo, hi]`` the quantizer is then built from, exactly as if that range were the min/max of the
data. Partial statistics of disjoint parts of one tensor (other batches, other machines, Dask
partitions) combine with :meth:`~TensorStatistic.merge`, exactly: whatever the split, update
and merge reach the same state, so ``finalize`` gives the same range as one pass over the whole
tensor. A statistic's state is plain numbers: :meth:`~TensorStatistic.to_json` /
:func:`statistic_from_json` round-trip it through JSON (floats are written as float64, which
holds float32 and float64 values exactly).

Adding a statistic is one class (``name``, ``update``, ``merge``, ``finalize``,
``dump_state``, ``load_state``, constructor parameters in ``params``) and one
:func:`register_statistic` (see docs/calibration.md).

This module holds the protocol, the registry and the order statistics:

* :class:`MinMaxStatistic` (``"minmax"``): the global min and max, the default; the walk's
  fused and table fast paths compute this statistic (and only it) without materialising the
  float results;
* :class:`PercentileStatistic` (``"percentile"``): exact ``np.percentile`` of the whole tensor
  at ``100 - p`` and ``p`` from bounded tails (:class:`~fhequant.quantization.tails.TailSelector`).

Histogram statistics (MSE-optimal clipping, KL/entropy threshold) are in
:mod:`fhequant.quantization.histogram_stats`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from fhequant.errors import QuantizationError, SerializationError
from fhequant.quantization.options import QuantizationOptions
from fhequant.quantization.tails import TailSelector, percentile_from_tails

__all__ = [
    "STATISTICS",
    "MinMaxStatistic",
    "PercentileStatistic",
    "StatisticSpec",
    "TensorStatistic",
    "make_statistic",
    "register_statistic",
    "statistic_from_json",
]

#: The registered statistics by name.
STATISTICS: dict[str, type[TensorStatistic]] = {}

_T = TypeVar("_T", bound="type[TensorStatistic]")


def register_statistic(cls: _T) -> _T:
    """Register a statistic class under its ``name`` (usable as a class decorator).

    Raises:
        QuantizationError: another class already has that name.
    """
    name = cls.name
    known = STATISTICS.get(name)
    if known is not None and known is not cls:
        raise QuantizationError(f"a calibration statistic named {name!r} is already registered")
    STATISTICS[name] = cls
    return cls


class TensorStatistic:
    """The calibration statistic of one tensor (the protocol; subclasses implement it).

    Args:
        n_total: the number of values the whole tensor holds (statistics that need it, such
            as exact percentiles, say so; the others ignore it).
        **params: the statistic's parameters (see each class).
    """

    #: The name the statistic is registered and selected under.
    name: ClassVar[str] = ""
    #: Whether it may choose the range of weights (a data-only statistic) as well as of
    #: activations.
    for_weights: ClassVar[bool] = True
    #: Whether the constructor needs ``n_total``.
    needs_total: ClassVar[bool] = False

    def __init__(self, n_total: int | None = None) -> None:
        self.n_total = n_total
        self.dtype: np.dtype[Any] | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The constructor parameters (JSON-ready)."""
        return {}

    # --- the protocol -------------------------------------------------------------------

    def update(self, block: Any) -> None:
        """Fold one block of finite values (any shape) into the statistic."""
        raise NotImplementedError

    def merge(self, other: TensorStatistic) -> TensorStatistic:
        """Fold the statistic of a disjoint part of the same tensor into this one (exact).

        Args:
            other: a statistic of the same class and parameters.

        Returns:
            self.

        Raises:
            QuantizationError: ``other`` is of another kind or has other parameters.
        """
        raise NotImplementedError

    def finalize(self, options: QuantizationOptions | None = None) -> np.ndarray:
        """The range to quantize with: ``[lo, hi]`` in the data's dtype.

        Args:
            options: the options of the quantizer the range is for (its n_bits, sign and
                symmetry); statistics that search a range for a quantizer need them.

        Raises:
            QuantizationError: no value was given.
        """
        raise NotImplementedError

    def dump_state(self) -> dict[str, Any]:
        """The accumulated state as JSON-ready numbers."""
        raise NotImplementedError

    @classmethod
    def row_ranges(
        cls, rows: np.ndarray, options: QuantizationOptions | None = None, **params: Any
    ) -> np.ndarray:
        """The range of each row of a 2-D array, as if one statistic (with ``params``) were
        made per row, updated with the row and finalized with ``options``: shape (rows, 2),
        in the rows' dtype. Per-channel weights use it; a statistic may override it with a
        vectorised search giving the same ranges (this default loops over the rows)."""
        out = np.empty((rows.shape[0], 2), dtype=rows.dtype)
        for i, row in enumerate(rows):
            stat = cls(n_total=row.size, **params)
            stat.update(row)
            out[i] = stat.finalize(options)
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`dump_state` wrote."""
        raise NotImplementedError

    # --- shared helpers -----------------------------------------------------------------

    def _check_mergeable(self, other: TensorStatistic) -> None:
        if type(other) is not type(self) or other.params != self.params:
            raise QuantizationError(
                f"cannot merge a {type(other).__name__} {other.params} into a "
                f"{type(self).__name__} {self.params}: partial statistics of one tensor must "
                "be of one kind with the same parameters"
            )
        if other.n_total != self.n_total:
            raise QuantizationError(
                f"cannot merge statistics made for {other.n_total} values into statistics "
                f"made for {self.n_total}"
            )
        if self.dtype is not None and other.dtype is not None and other.dtype != self.dtype:
            raise QuantizationError(
                f"cannot merge {other.dtype} statistics into {self.dtype} statistics"
            )

    def _block(self, block: Any) -> np.ndarray:
        arr = np.asarray(block)
        if arr.size and self.dtype is None:
            self.dtype = arr.dtype
        return arr

    def _merge_dtype(self, other: TensorStatistic) -> None:
        if self.dtype is None:
            self.dtype = other.dtype

    def _ends(self, lo: Any, hi: Any) -> np.ndarray:
        if lo is None or hi is None:
            raise QuantizationError(
                f"the {self.name} statistic has seen no value; calibrate with at least one row"
            )
        return np.array([lo, hi], dtype=self.dtype)

    # --- JSON ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The statistic as a JSON-ready dict (:func:`statistic_from_json` reads it)."""
        return {
            "statistic": self.name,
            "params": self.params,
            "n_total": self.n_total,
            "dtype": None if self.dtype is None else self.dtype.str,
            "state": self.dump_state(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params}, n_total={self.n_total})"


def _params_from(doc: Any, key: str) -> Any:
    if not isinstance(doc, dict) or key not in doc:
        raise SerializationError(f"calibration statistic: the document lacks {key!r}")
    return doc[key]


def statistic_from_json(doc: dict[str, Any]) -> TensorStatistic:
    """Rebuild a statistic from :meth:`TensorStatistic.to_json` output.

    Raises:
        SerializationError: a missing field or an unknown statistic name.
    """
    name = _params_from(doc, "statistic")
    cls = STATISTICS.get(name)
    if cls is None:
        raise SerializationError(
            f"calibration statistic {name!r} is not registered; known: {sorted(STATISTICS)}"
        )
    params = _params_from(doc, "params")
    stat = cls(n_total=_params_from(doc, "n_total"), **params)
    dtype = _params_from(doc, "dtype")
    stat.dtype = None if dtype is None else np.dtype(dtype)
    try:
        stat.load_state(_params_from(doc, "state"))
    except (KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"calibration statistic {name!r}: bad state ({exc})") from exc
    return stat


@dataclass(frozen=True)
class StatisticSpec:
    """A statistic to make for each tensor: its registered name and parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def make(self, n_total: int | None = None) -> TensorStatistic:
        """A fresh statistic for a tensor of ``n_total`` values."""
        return make_statistic(self.name, n_total, **self.params)

    @property
    def for_weights(self) -> bool:
        """Whether the statistic may choose weight ranges."""
        return STATISTICS[self.name].for_weights

    def row_ranges(
        self, rows: np.ndarray, options: QuantizationOptions | None = None
    ) -> np.ndarray:
        """The range of each row of ``rows`` (see :meth:`TensorStatistic.row_ranges`)."""
        return STATISTICS[self.name].row_ranges(rows, options, **self.params)


def make_statistic(name: str, n_total: int | None = None, **params: Any) -> TensorStatistic:
    """A new statistic of the registered ``name``.

    Raises:
        QuantizationError: an unknown name, bad parameters, or no ``n_total`` for a statistic
            that needs it.
    """
    cls = STATISTICS.get(name)
    if cls is None:
        raise QuantizationError(
            f"unknown calibration statistic {name!r}; known: {sorted(STATISTICS)}"
        )
    if cls.needs_total and n_total is None:
        raise QuantizationError(f"the {name} statistic needs the tensor's total size n_total")
    try:
        return cls(n_total=n_total, **params)
    except TypeError as exc:
        raise QuantizationError(f"calibration statistic {name!r}: bad parameters ({exc})") from exc


def _merged(a: Any, b: Any, pick: Callable[[Any, Any], Any]) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return pick(a, b)


@register_statistic
class MinMaxStatistic(TensorStatistic):
    """The global min and max (the default; bit-identical to the reference's statistics).

    ``update`` reduces each block with ``min()`` / ``max()`` and folds with
    ``np.minimum`` / ``np.maximum`` of numpy scalars, as the walk's statistics pass does.
    """

    name = "minmax"

    def __init__(self, n_total: int | None = None) -> None:
        super().__init__(n_total)
        self.lo: Any = None
        self.hi: Any = None

    def update(self, block: Any) -> None:
        arr = self._block(block)
        if not arr.size:
            return
        self.lo = _merged(self.lo, arr.min(), np.minimum)
        self.hi = _merged(self.hi, arr.max(), np.maximum)

    def merge(self, other: TensorStatistic) -> TensorStatistic:
        self._check_mergeable(other)
        assert isinstance(other, MinMaxStatistic)
        self._merge_dtype(other)
        self.lo = _merged(self.lo, other.lo, np.minimum)
        self.hi = _merged(self.hi, other.hi, np.maximum)
        return self

    def finalize(self, options: QuantizationOptions | None = None) -> np.ndarray:
        return self._ends(self.lo, self.hi)

    @classmethod
    def row_ranges(
        cls, rows: np.ndarray, options: QuantizationOptions | None = None, **params: Any
    ) -> np.ndarray:
        if rows.shape[1] == 0:
            raise QuantizationError("the minmax statistic has seen no value in a row")
        return np.stack([rows.min(axis=1), rows.max(axis=1)], axis=1)

    def dump_state(self) -> dict[str, Any]:
        return {
            "lo": None if self.lo is None else float(self.lo),
            "hi": None if self.hi is None else float(self.hi),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        dtype = self.dtype if self.dtype is not None else np.dtype(np.float64)
        self.lo = None if state["lo"] is None else dtype.type(state["lo"])
        self.hi = None if state["hi"] is None else dtype.type(state["hi"])


@register_statistic
class PercentileStatistic(TensorStatistic):
    """Clip to the ``100 - percentile`` and ``percentile`` percentiles of the whole tensor.

    Exact (numpy's linear ``np.percentile`` of the concatenated tensor, bit for bit) with a
    bounded memory: only the ``(100 - percentile) %`` smallest and largest values are kept.

    Args:
        n_total: the number of values of the whole tensor (required).
        percentile: the upper percentile, in [90, 100] (default 99.99).
    """

    name = "percentile"
    needs_total = True

    def __init__(self, n_total: int | None = None, percentile: float = 99.99) -> None:
        super().__init__(n_total)
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)):
            raise QuantizationError(f"percentile must be a number, got {percentile!r}")
        if not 90.0 <= float(percentile) <= 100.0:
            raise QuantizationError(
                f"percentile must be in [90, 100] (the kept tails bound the memory), got "
                f"{percentile}"
            )
        if n_total is None or int(n_total) < 1:
            raise QuantizationError(f"the percentile statistic needs n_total >= 1, got {n_total!r}")
        self.percentile = float(percentile)
        tail = (100.0 - self.percentile) / 100.0
        self.selector = TailSelector(
            int(n_total), (100.0 - self.percentile, self.percentile), tail=tail
        )

    @property
    def params(self) -> dict[str, Any]:
        return {"percentile": self.percentile}

    def update(self, block: Any) -> None:
        arr = self._block(block)
        if arr.size:
            self.selector.update(arr)

    def merge(self, other: TensorStatistic) -> TensorStatistic:
        self._check_mergeable(other)
        assert isinstance(other, PercentileStatistic)
        self._merge_dtype(other)
        self.selector.merge(other.selector)
        return self

    def finalize(self, options: QuantizationOptions | None = None) -> np.ndarray:
        if self.selector.low is None:
            return self._ends(None, None)
        lo = percentile_from_tails(self.selector, 100.0 - self.percentile)
        hi = percentile_from_tails(self.selector, self.percentile)
        return self._ends(lo, hi)

    def dump_state(self) -> dict[str, Any]:
        return self.selector.dump_state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.selector.load_state(state)
