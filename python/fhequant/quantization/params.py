"""UniformQuantizationParameters: scale, zero point and offset (docs/contract.md §1.3)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fhequant.errors import QuantizationError, SerializationError
from fhequant.quantization.domain import MAX_ZERO_POINT, is_offset, is_scale, is_zero_point
from fhequant.quantization.options import STABILITY_CONST, check_option_conflicts
from fhequant.serialization import Serializable, field

__all__ = ["UniformQuantizationParameters", "load_params", "values_equal"]


def load_params(
    metadata: dict[str, Any], owner: str, required: bool = True
) -> tuple[Any, Any, Any]:
    """(scale, zero_point, offset) of a document, each None or valid (docs/contract.md §1.7):
    a non-NaN float scale or finite float array, a finite zero point (|z| < 2^53) or numeric
    array broadcastable with the scale, an int offset >= 0.

    Raises:
        SerializationError: naming the field.
    """
    scale = field(
        metadata, "scale", owner, is_scale, "a float (not NaN) or a finite float array",
        optional=not required, nullable=True,
    )  # fmt: skip
    zero_point = field(
        metadata, "zero_point", owner, is_zero_point, "a finite number or numeric array",
        optional=not required, nullable=True,
    )  # fmt: skip
    offset = field(
        metadata, "offset", owner, is_offset, "an int >= 0", optional=not required, nullable=True
    )
    if isinstance(scale, np.ndarray) or isinstance(zero_point, np.ndarray):
        try:
            np.broadcast_shapes(np.shape(scale), np.shape(zero_point))
        except ValueError as exc:
            raise SerializationError(
                f"{owner}: the shapes of 'scale' {np.shape(scale)} and 'zero_point' "
                f"{np.shape(zero_point)} do not broadcast"
            ) from exc
    return scale, zero_point, offset


def values_equal(mine: Any, other: Any) -> bool:
    """``array_equal`` if either side is an ndarray, else ``==`` (as a Python bool)."""
    if isinstance(mine, np.ndarray) or isinstance(other, np.ndarray):
        return bool(np.array_equal(mine, other))
    return bool(mine == other)


def _finite_range(delta: Any, rmin: Any, rmax: Any) -> Any:
    if not np.isfinite(delta):
        raise QuantizationError(
            f"compute_quantization_parameters: the range [{rmin!r}, {rmax!r}] is wider than "
            "float64 can hold (rmax - rmin overflows); rescale the data (docs/contract.md §1.7)"
        )
    return delta


def _checked_zero_point(zero_point: Any, rmin: Any, rmax: Any) -> Any:
    """The rint-ed zero point as np.int64, unless it does not fit (docs/contract.md §1.7)."""
    if not np.isfinite(zero_point) or abs(zero_point) >= MAX_ZERO_POINT:
        raise QuantizationError(
            f"compute_quantization_parameters: the range [{rmin!r}, {rmax!r}] gives a zero "
            f"point of {zero_point!r}, beyond ±2^53: the range is too narrow for its distance "
            "from 0; subtract an offset from the data first (docs/contract.md §1.7)"
        )
    return zero_point.astype(np.int64)


class UniformQuantizationParameters(Serializable):
    """The affine map between floats and integers: r = scale · (q - zero_point).

    ``offset`` is 2^(n-1) for signed integers (0 otherwise) and sets the clip range
    [-offset, 2^n - 1 - offset]. ``zero_point`` is a Python int, an ``np.int64`` or, for
    graph outputs, a float array.
    """

    FIELDS: ClassVar[tuple[str, ...]] = ("scale", "zero_point", "offset")

    def __init__(self, scale: Any = None, zero_point: Any = None, offset: Any = None) -> None:
        """Create parameters, empty by default.

        Args:
            scale: the quantization step.
            zero_point: the integer that represents the float 0.
            offset: 2^(n-1) for signed integers, else 0.
        """
        self.scale = scale
        self.zero_point = zero_point
        self.offset = offset

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UniformQuantizationParameters):
            return NotImplemented
        return all(values_equal(getattr(self, name), getattr(other, name)) for name in self.FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"UniformQuantizationParameters(scale={self.scale!r}, "
            f"zero_point={self.zero_point!r}, offset={self.offset!r})"
        )

    def copy_params(self, params: UniformQuantizationParameters) -> None:
        """Copy scale, zero_point and offset from ``params``.

        Args:
            params: the source parameters.
        """
        self.scale = params.scale
        self.zero_point = params.zero_point
        self.offset = params.offset

    @property
    def quant_params(self) -> UniformQuantizationParameters:
        """A copy of these parameters."""
        return UniformQuantizationParameters(self.scale, self.zero_point, self.offset)

    def compute_quantization_parameters(self, options: Any, stats: Any) -> None:
        """Set scale, zero_point and offset from the options and the min/max statistics.

        The first matching case wins (numpy 1.26 scalar dtypes throughout):

        * Δ = rmax - rmin < 1e-6 and |rmax| < 1e-6: offset 0, scale 1.0, zp rint(-rmin);
        * Δ < 1e-6 otherwise: offset 0, scale float64(rmax) (maybe negative), zp 0;
        * symmetric: offset 2^(n-1), scale max(|rmax|, |rmin|)/(2^n - 1 - offset), zp 0;
        * asymmetric: scale Δ/(2^n - 1) unless already set; zp 0 for QAT, else
          rint((-rmax·offset - rmin·(2^n - 1 - offset))/Δ) as np.int64. 0 is not forced into
          [rmin, rmax], so zp may lie outside the integer range.

        Args:
            options: QuantizationOptions (or anything with the same fields).
            stats: MinMaxQuantizationStats with rmax and rmin set.

        Raises:
            QuantizationError: conflicting options, statistics without rmax/rmin, a range
                that overflows float64 or a zero point beyond ±2^53 (docs/contract.md §1.7).
        """
        check_option_conflicts(options, "compute_quantization_parameters")
        rmax, rmin = stats.rmax, stats.rmin
        if rmax is None or rmin is None:
            raise QuantizationError(
                "compute_quantization_parameters: the statistics have no "
                f"{'rmax' if rmax is None else 'rmin'}; call compute_quantization_stats(values) "
                "or give both rmin and rmax"
            )
        n_bits = options.n_bits
        self.offset = 2 ** (n_bits - 1) if options.is_signed else 0
        # Division by zero is legal here: symmetric n_bits = 1 gives scale +inf
        # (docs/contract.md §1.3).
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            delta = rmax - rmin
            if delta < STABILITY_CONST:
                self.offset = 0
                if np.abs(rmax) < STABILITY_CONST:
                    self.scale = np.float64(1.0)
                    self.zero_point = np.rint(-rmin).astype(np.int64)
                else:
                    self.scale = np.float64(rmax)
                    self.zero_point = 0
            elif options.is_symmetric:
                self.zero_point = 0
                largest = np.maximum(np.abs(rmax), np.abs(rmin))
                self.scale = np.float64(np.float64(largest) / (2**n_bits - 1 - self.offset))
            else:
                if not np.isfinite(delta):
                    # float32 data spanning about ±3.4e38: its range overflows float32 but
                    # not float64 (docs/contract.md §1.7); these values were inf before.
                    rmax, rmin = np.float64(rmax), np.float64(rmin)
                    delta = _finite_range(rmax - rmin, rmin, rmax)
                if self.scale is None:
                    self.scale = np.float64(np.float64(delta) / (2**n_bits - 1))
                if options.is_qat:
                    self.zero_point = 0
                else:
                    numerator = -rmax * self.offset - rmin * (2**n_bits - 1 - self.offset)
                    if not np.isfinite(numerator):
                        numerator = -np.float64(rmax) * self.offset - np.float64(rmin) * (
                            2**n_bits - 1 - self.offset
                        )
                    self.zero_point = _checked_zero_point(np.rint(numerator / delta), rmin, rmax)
        self._check_dequantized_range(n_bits)

    def _check_dequantized_range(self, n_bits: int) -> None:
        """QuantizationError when scale·(q - zp) overflows float64 for an integer of the clip
        range (data near float64's maximum); an infinite scale is the pinned symmetric
        1-bit case (docs/contract.md §1.3) and passes."""
        scale, zp = self.scale, self.zero_point
        if not isinstance(scale, float | np.floating) or not np.isfinite(scale):
            return
        if not isinstance(zp, int | float | np.integer | np.floating):
            return
        offset = int(self.offset or 0)
        lo, hi = -offset, 2**n_bits - 1 - offset
        widest = max(abs(lo - float(zp)), abs(hi - float(zp)))
        with np.errstate(over="ignore"):
            if not np.isfinite(np.float64(scale) * np.float64(widest)):
                raise QuantizationError(
                    f"the scale {float(scale)!r} times the widest integer {widest:g} overflows "
                    "float64 when dequantized (data near float64's maximum); rescale the data"
                )

    def dump_dict(self) -> dict[str, Any]:
        """scale, zero_point and offset, in order."""
        return {"scale": self.scale, "zero_point": self.zero_point, "offset": self.offset}

    @classmethod
    def load_dict(cls, metadata: dict[str, Any]) -> UniformQuantizationParameters:
        """Rebuild parameters from ``dump_dict`` output.

        Args:
            metadata: the decoded fields.

        Returns:
            The parameters.
        """
        return cls(*load_params(metadata, cls.__name__))
