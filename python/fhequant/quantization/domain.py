"""The valid domain of the quantizers (docs/contract.md §1.7).

Values outside it used to give nonsense integers silently (a 64-bit clip done in int64, an
infinite scale, a zero point that overflows int64); they are rejected here with typed errors.
The checks run where a user hands a value in (``QuantizationOptions``, ``QuantizedArray``
keywords, calibration data), never on parameters fhequant computed itself, so the
reference's pinned quirks (a negative degenerate scale, the infinite scale of symmetric
1-bit quantizers, a float zero point) keep working.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fhequant.errors import ArgumentError, DTypeError, NonFiniteError, QuantizationError

__all__ = [
    "MAX_N_BITS",
    "MAX_ZERO_POINT",
    "check_explicit_params",
    "check_explicit_stats",
    "check_float_data",
    "check_n_bits",
]

#: The widest quantizer: clip bounds and integers stay exact in float64 and int64 far below
#: this (concrete's table lookups stop at 16 bits anyway).
MAX_N_BITS = 32
#: Zero points beyond this magnitude are no longer exact float64 integers.
MAX_ZERO_POINT = 2**53


def check_n_bits(n_bits: Any, where: str) -> None:
    """Raise unless ``n_bits`` is an int (not a bool) in [1, MAX_N_BITS].

    Raises:
        ArgumentError: not an integer (a TypeError).
        QuantizationError: out of range (a ValueError).
    """
    if isinstance(n_bits, (bool, np.bool_)) or not isinstance(n_bits, (int, np.integer)):
        raise ArgumentError(
            f"{where}: n_bits must be an int, got {type(n_bits).__name__} {n_bits!r}; give a "
            f"whole number of bits between 1 and {MAX_N_BITS}"
        )
    if not 1 <= int(n_bits) <= MAX_N_BITS:
        raise QuantizationError(
            f"{where}: n_bits={int(n_bits)} is outside the supported range [1, {MAX_N_BITS}]"
        )


def check_float_data(values: Any, where: str) -> None:
    """Raise for float data the quantizers cannot represent faithfully.

    Masked arrays (the mask would be half-honoured) and float dtypes other than float32 and
    float64 are rejected: float16 scales underflow and its integers overflow past 65504,
    ``np.longdouble`` does not survive the float64 kernels and JSON.

    Raises:
        DTypeError: a masked array, float16 or longdouble data (a TypeError).
    """
    if isinstance(values, np.ma.MaskedArray):
        raise DTypeError(
            f"{where}: masked arrays are not supported (the mask would be ignored by part of "
            "the computation); pass values.compressed() or values.filled(fill_value)"
        )
    dtype = getattr(values, "dtype", None)
    if isinstance(dtype, np.dtype) and dtype.kind == "f" and dtype.itemsize not in (4, 8):
        raise DTypeError(
            f"{where}: float data of dtype {dtype} is not supported (float16 scales and "
            "integers overflow or underflow, longdouble does not survive the float64 kernels "
            "and JSON); convert with .astype(numpy.float32) or .astype(numpy.float64)"
        )


def _real(value: Any, name: str, where: str) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise ArgumentError(f"{where}: {name} must be a number, got the bool {value!r}")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentError(
            f"{where}: {name} must be a real number, got {type(value).__name__} {value!r}"
        )
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise NonFiniteError(f"{where}: {name} must be finite, got {value!r}")
    return number


def check_explicit_params(
    scale: Any, zero_point: Any, offset: Any, n_bits: int, where: str
) -> None:
    """Check scale / zero_point / offset given as keywords by the user.

    The scale must be a finite number > 0 small enough that scale·(2^n_bits + |zero_point|)
    is finite (every clipped integer then dequantizes to a finite float), the zero point a
    finite number (a float zero point is a pinned reference quirk and stays allowed) of
    magnitude below 2^53, the offset an int >= 0. Arrays are left to the ops that build them.

    Raises:
        ArgumentError: a value of the wrong type (a TypeError).
        NonFiniteError: a NaN or infinite value (a ValueError).
        QuantizationError: a scale <= 0, a zero point or offset out of range (a ValueError).
    """
    zp = 0.0
    if zero_point is not None and not (isinstance(zero_point, np.ndarray) and zero_point.ndim > 0):
        zp = _real(zero_point, "zero_point", where)
        if abs(zp) >= MAX_ZERO_POINT:
            raise QuantizationError(
                f"{where}: zero_point {zero_point!r} is beyond ±2^53; it cannot be represented "
                "exactly"
            )
    if scale is not None and not (isinstance(scale, np.ndarray) and scale.ndim > 0):
        step = _real(scale, "scale", where)
        if step <= 0:
            raise QuantizationError(f"{where}: scale must be > 0, got {scale!r}")
        if not math.isfinite(step * (2.0**n_bits + abs(zp))):
            raise QuantizationError(
                f"{where}: scale {scale!r} is too large: the dequantized integers of "
                f"{n_bits} bits would overflow float64"
            )
    if offset is not None:
        if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, (int, np.integer)):
            raise ArgumentError(
                f"{where}: offset must be an int (0, or 2^(n_bits-1) for signed integers), got "
                f"{type(offset).__name__} {offset!r}"
            )
        if not 0 <= int(offset) <= 2**MAX_N_BITS:
            raise QuantizationError(f"{where}: offset must be 0 or 2^(n_bits-1), got {int(offset)}")


def check_scale_for_data(scale: Any, values: Any, where: str) -> None:
    """Raise QuantizationError when float32 data cannot be divided by the scale.

    float32 data is divided in float32 (numpy 1.26 dtypes, docs/contract.md §1.4): a scale
    below float32's range becomes 0 there (every integer NaN, cast to -2**63) and one above
    it becomes inf.
    """
    if not isinstance(values, np.ndarray) or values.dtype != np.float32:
        return
    if not isinstance(scale, float | np.floating):
        return
    with np.errstate(over="ignore", under="ignore"):
        narrowed = np.float32(scale)
    if math.isfinite(float(scale)) and (narrowed == 0 or not np.isfinite(narrowed)):
        raise QuantizationError(
            f"{where}: the scale {float(scale)!r} is outside float32's range, and float32 "
            "data is divided in float32; give float64 data (values.astype(numpy.float64)) or "
            "a scale within float32's range"
        )


def check_explicit_stats(rmin: Any, rmax: Any, where: str) -> None:
    """Check rmin / rmax given as keywords: finite numbers with rmin <= rmax.

    Raises:
        ArgumentError, NonFiniteError, QuantizationError: as for :func:`check_explicit_params`.
    """
    if rmin is None or rmax is None:
        return
    low = _real(rmin, "rmin", where)
    high = _real(rmax, "rmax", where)
    if low > high:
        raise QuantizationError(
            f"{where}: rmin ({rmin!r}) is greater than rmax ({rmax!r}); swap them"
        )


# --- loading (docs/contract.md §1.6): predicates for serialization.field --------------------


def is_int(value: Any) -> bool:
    """An int or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_flag(value: Any) -> bool:
    """A bool or numpy bool."""
    return isinstance(value, (bool, np.bool_))


def is_n_bits(value: Any) -> bool:
    """An int in [1, MAX_N_BITS]."""
    return is_int(value) and 1 <= int(value) <= MAX_N_BITS


def is_finite_real(value: Any) -> bool:
    """A finite int/float scalar (Python or numpy), not a bool."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def is_scale(value: Any) -> bool:
    """A non-NaN float scalar (inf is the pinned symmetric 1-bit scale) or a finite float
    array."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "f" and bool(np.all(np.isfinite(value)))
    return isinstance(value, (float, np.floating)) and not math.isnan(float(value))


def is_zero_point(value: Any) -> bool:
    """A finite real scalar below 2^53 in magnitude, or a finite numeric array."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "iuf" and bool(np.all(np.isfinite(value)))
    return is_finite_real(value) and abs(float(value)) < MAX_ZERO_POINT


def is_offset(value: Any) -> bool:
    """An int in [0, 2^MAX_N_BITS]."""
    return is_int(value) and 0 <= int(value) <= 2**MAX_N_BITS
