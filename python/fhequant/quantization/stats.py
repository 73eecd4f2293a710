"""MinMaxQuantizationStats: rmax, rmin and the rounded unique values (docs/contract.md §1.2)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fhequant.errors import QuantizationError
from fhequant.kernels import quant as _kernels
from fhequant.quantization.domain import check_float_data, is_finite_real
from fhequant.serialization import Serializable, field

__all__ = ["MinMaxQuantizationStats", "load_range"]


def load_range(metadata: dict[str, Any], owner: str, required: bool = True) -> tuple[Any, Any]:
    """(rmax, rmin) of a document: each None or a finite number.

    Raises:
        SerializationError: naming the field.
    """
    rmax = field(
        metadata,
        "rmax",
        owner,
        is_finite_real,
        "a finite number",
        optional=not required,
        nullable=True,
    )
    rmin = field(
        metadata,
        "rmin",
        owner,
        is_finite_real,
        "a finite number",
        optional=not required,
        nullable=True,
    )
    return rmax, rmin


# Tolerances of the uniform-grid test of check_is_uniform_quantized.
_UNIFORM_ATOL = 0.02
_UNIFORM_RTOL = 1e-5


class _LazyUnique:
    """The rounded unique values of an array nobody else can modify, computed on first read.

    A QuantizedArray owns the copy of its float values, so the sort of
    ``rounded_unique`` (the most expensive pass of its construction) can wait until someone
    reads ``uvalues``; the QuantizedArray computes it before handing its values out
    (``QuantizedArray.values``), so the result is always that of the values at construction.
    Copies of the statistics share the cell, hence the one result.
    """

    __slots__ = ("_result", "_source")

    def __init__(self, source: np.ndarray) -> None:
        self._source: np.ndarray | None = source
        self._result: Any = None

    def get(self) -> Any:
        source = self._source
        if source is not None:
            self._result = _kernels.rounded_unique(source)
            self._source = None  # after the result: a concurrent reader sees one or the other
        return self._result


class MinMaxQuantizationStats(Serializable):
    """Calibration statistics of a tensor: global min/max and the 2-decimal unique values.

    ``uvalues`` is inert (it never changes parameters), is not serialized and is ignored by
    ``==``; :meth:`check_is_uniform_quantized` needs it.
    """

    FIELDS: ClassVar[tuple[str, ...]] = ("rmax", "rmin")

    def __init__(
        self, rmax: Any = None, rmin: Any = None, uvalues: np.ndarray | None = None
    ) -> None:
        """Create statistics, empty by default.

        Args:
            rmax: maximum of the values.
            rmin: minimum of the values.
            uvalues: sorted unique values rounded to 2 decimals.
        """
        self.rmax = rmax
        self.rmin = rmin
        self._uvalues: Any = uvalues

    @property
    def uvalues(self) -> Any:
        """Sorted unique values rounded to 2 decimals (None if unknown)."""
        if isinstance(self._uvalues, _LazyUnique):
            return self._uvalues.get()
        return self._uvalues

    @uvalues.setter
    def uvalues(self, uvalues: Any) -> None:
        self._uvalues = uvalues

    def resolve_uvalues(self) -> None:
        """Compute pending unique values now (before their source array is handed out)."""
        if isinstance(self._uvalues, _LazyUnique):
            self._uvalues.get()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MinMaxQuantizationStats):
            return NotImplemented
        return bool(self.rmax == other.rmax and self.rmin == other.rmin)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MinMaxQuantizationStats(rmax={self.rmax!r}, rmin={self.rmin!r})"

    def compute_quantization_stats(
        self,
        values: np.ndarray,
        name: str = "values",
        lazy_unique: bool = False,
        extremes: tuple[Any, Any] | None = None,
    ) -> None:
        """Set rmin/rmax (numpy scalars of the data dtype) and uvalues from ``values``.

        Args:
            values: the calibration data (any shape, at least one element).
            name: the tensor named in error messages.
            lazy_unique: compute uvalues on their first read instead of now; only for an
                ndarray that nothing modifies before that read (a QuantizedArray's own copy).
            extremes: ``kernels.quant.min_max(values, name)`` when the caller already has it
                (a QuantizedArray scans its input while copying it).

        Raises:
            EmptyTensorError: ``values`` has no element (a ValueError).
            NonFiniteError: ``values`` holds NaN or Inf (a ValueError).
        """
        check_float_data(values, name)
        values = np.asarray(values)
        self.rmin, self.rmax = _kernels.min_max(values, name) if extremes is None else extremes
        if lazy_unique:
            self._uvalues = _LazyUnique(values)
        else:
            self._uvalues = _kernels.rounded_unique(values)

    def update_quantization_stats(self, values: np.ndarray, name: str = "values") -> None:
        """Fold one more batch into the statistics (streamed calibration, docs/contract.md
        decision 4).

        After the batches b_1..b_k, rmin/rmax/uvalues equal those of
        ``compute_quantization_stats(concatenate(b_1..b_k))`` for batches of one dtype:
        min/max of numpy scalars keep their dtype, and uvalues is the sorted union.

        Args:
            values: the next calibration batch.
            name: the tensor named in error messages.
        """
        check_float_data(values, name)
        values = np.asarray(values)
        if self.rmin is None or self.rmax is None:
            self.compute_quantization_stats(values, name)
            return
        batch_min, batch_max = _kernels.min_max(values, name)
        self.rmin = np.minimum(self.rmin, batch_min)
        self.rmax = np.maximum(self.rmax, batch_max)
        batch_unique = _kernels.rounded_unique(values)
        self.uvalues = (
            batch_unique if self.uvalues is None else np.union1d(self.uvalues, batch_unique)
        )

    def copy_stats(self, stats: MinMaxQuantizationStats) -> None:
        """Copy rmax, rmin and uvalues from ``stats``.

        Args:
            stats: the source statistics.
        """
        self.rmax = stats.rmax
        self.rmin = stats.rmin
        self._uvalues = stats._uvalues  # a pending computation is shared, not run

    @property
    def quant_stats(self) -> MinMaxQuantizationStats:
        """A copy of these statistics."""
        return MinMaxQuantizationStats(self.rmax, self.rmin, self._uvalues)

    def check_is_uniform_quantized(self, options: Any) -> bool:
        """Whether the calibration values already sit on a uniform grid of ``options.n_bits``.

        Args:
            options: quantization options (only ``n_bits`` is used).

        Returns:
            True if there are 2..2^n_bits unique values whose gaps are integer multiples of
            the smallest gap (within 0.02 + 1e-5·|gap|).

        Raises:
            QuantizationError: no uvalues (explicit or loaded statistics).
        """
        if self.uvalues is None:
            raise QuantizationError(
                "check_is_uniform_quantized: these statistics have no uvalues (they were given "
                "explicitly or loaded from JSON); call compute_quantization_stats(values) first"
            )
        uvalues = np.asarray(self.uvalues)
        if uvalues.size > 2**options.n_bits or uvalues.size <= 1:
            return False
        gaps = np.unique(np.diff(uvalues))
        smallest = gaps[0]
        rounded = np.rint(gaps / smallest) * smallest
        return bool(
            np.all(np.abs(gaps - rounded) <= _UNIFORM_ATOL + _UNIFORM_RTOL * np.abs(rounded))
        )

    def dump_dict(self) -> dict[str, Any]:
        """rmax and rmin (uvalues is not written)."""
        return {"rmax": self.rmax, "rmin": self.rmin}

    @classmethod
    def load_dict(cls, metadata: dict[str, Any]) -> MinMaxQuantizationStats:
        """Rebuild statistics (without uvalues) from ``dump_dict`` output.

        Args:
            metadata: the decoded fields.

        Returns:
            The statistics.
        """
        return cls(*load_range(metadata, cls.__name__))
