"""The hot quantization paths, with numpy semantics, dispatched to the native core.

Every kernel here has a ``*_reference`` twin in :mod:`fhequant.kernels.reference.quant`: the
twin is the specification, the property tests check the dispatched version against it bit for
bit, and the dispatched version falls back to it for the inputs the core does not take (0-d
arrays, array zero points, other dtypes). The quantizer classes call the dispatched names
(and the twins, re-exported here, where they need numpy's own semantics).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from fhequant import _core
from fhequant.kernels.reference.quant import (
    dequantize_reference,
    min_max_reference,
    quantize_reference,
    rounded_unique_reference,
)

__all__ = [
    "copy_min_max",
    "dequantize",
    "dequantize_reference",
    "min_max",
    "min_max_reference",
    "quantize",
    "quantize_reference",
    "rounded_unique",
    "rounded_unique_reference",
]


_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_FLOATS = (_F32, _F64)
_QUANT_OUT = {np.dtype(t): np.dtype(t).name for t in (np.int64, np.int32, np.float32, np.float64)}
_DEQUANT_IN = tuple(np.dtype(t) for t in (np.int64, np.int32, np.int16, np.int8))


def _is_real_scalar(value: Any) -> bool:
    """A bool/int/float scalar (Python, numpy or 0-d array) numpy treats by value."""
    if isinstance(value, (bool, int, float, np.bool_, np.integer)):
        return True
    if isinstance(value, np.floating):
        return value.dtype.itemsize <= 8
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.dtype.kind in "biu" or (value.dtype.kind == "f" and value.dtype.itemsize <= 8)
    return False


def _as_float(value: Any, dtype: np.dtype[Any]) -> float:
    """numpy's conversion of a scalar operand to the loop dtype, as a Python float."""
    return float(np.asarray(value).astype(dtype))


def _native(values: Any, dtypes: tuple[np.dtype[Any], ...]) -> bool:
    """An exact, non-empty ndarray of one of ``dtypes`` (native byte order), aligned, whose
    strides never alias two elements (ndarray views refuse aliasing layouts such as
    ``np.broadcast_to`` results and the zero strides numpy gives empty arrays)."""
    return (
        type(values) is np.ndarray
        and values.dtype in dtypes
        and values.flags.aligned
        and values.size > 0
        and all(st != 0 or n == 1 for st, n in zip(values.strides, values.shape, strict=True))
    )


def _quant_plan(
    values: Any, scale: Any, zero_point: Any, lo: Any, hi: Any, dtype: Any
) -> tuple[Any, ...] | None:
    """Arguments of ``_core.quantize`` reproducing numpy's dtypes, or None to use numpy."""
    if not _native(values, _FLOATS) or values.ndim == 0:
        return None
    try:
        out = np.dtype(dtype)
    except TypeError:
        return None
    if out not in _QUANT_OUT or not (_is_real_scalar(scale) and _is_real_scalar(zero_point)):
        return None
    clipping = lo is not None
    if clipping and not (_is_real_scalar(lo) and _is_real_scalar(hi)):
        return None
    try:
        # Value-based promotion (numpy 1.26) of each step: values / scale, + zp, clip.
        div = np.result_type(values, scale)
        add = np.result_type(div, zero_point)
        clip = np.result_type(add, lo, hi) if clipping else add
    except (TypeError, ValueError, OverflowError):
        return None
    if div not in _FLOATS or add not in _FLOATS or clip not in _FLOATS:
        return None
    lo_f = _as_float(lo, clip) if clipping else None
    hi_f = _as_float(hi, clip) if clipping else None
    return (
        _as_float(scale, div),
        _as_float(zero_point, add),
        lo_f,
        hi_f,
        div == _F64,
        add == _F64,
        clip == _F64,
        _QUANT_OUT[out],
    )


def quantize(
    values: npt.NDArray[np.floating[Any]],
    scale: np.float64,
    zero_point: Any,
    lo: int | None,
    hi: int | None,
    dtype: npt.DTypeLike = np.int64,
) -> Any:
    """Native ``quantize_reference``: same values, dtype and memory order for float arrays.

    0-d arrays, array zero points and other dtypes go to the numpy reference.
    """
    plan = _quant_plan(values, scale, zero_point, lo, hi, dtype)
    if plan is None:
        return quantize_reference(values, scale, zero_point, lo, hi, dtype)
    if values.flags.f_contiguous and not values.flags.c_contiguous:
        return _core.quantize(values.T, *plan).T
    return _core.quantize(values, *plan)


#: The narrow outputs of :func:`quantize_narrow`, smallest first.
NARROW_INTS = (np.dtype(np.int8), np.dtype(np.int16))


def quantize_narrow(
    values: Any, scale: Any, zero_point: Any, lo: int, hi: int
) -> tuple[np.ndarray, int, int] | None:
    """``quantize(values, ..., lo, hi)`` straight into int8 or int16, with its min and max.

    The integers equal the int64 ones of :func:`quantize` (same plan, then a narrowing that
    the clip bounds make lossless); the smallest of int8/int16 whose range holds
    ``[lo, hi]`` with room below ``lo`` is used, so the kernel's out-of-range mark (the
    dtype's minimum, given to NaN) cannot be a real value.

    Returns:
        (integers, min, max), or None when the native kernel does not apply (other dtypes,
        array parameters, bounds too wide for int16) or some value was NaN.
    """
    narrow = next((d for d in NARROW_INTS if np.iinfo(d).min < lo and hi <= np.iinfo(d).max), None)
    if narrow is None:
        return None
    plan = _quant_plan(values, scale, zero_point, lo, hi, np.int64)
    if plan is None:
        return None
    plan = (*plan[:-1], narrow.name)
    if values.flags.f_contiguous and not values.flags.c_contiguous:
        out = _core.quantize(values.T, *plan).T
    else:
        out = _core.quantize(values, *plan)
    low, high = int(out.min()), int(out.max())
    if low == np.iinfo(narrow).min:
        return None
    return out, low, high


def dequantize(q: Any, scale: Any, zero_point: Any) -> Any:
    """Native ``dequantize_reference`` for int8/16/32/64 arrays and scalar zero points."""
    if (
        _native(q, _DEQUANT_IN)
        and q.ndim > 0
        and _is_real_scalar(scale)
        and _is_real_scalar(zero_point)
    ):
        try:
            wide = np.result_type(_F64, scale) == _F64
        except (TypeError, ValueError, OverflowError):
            wide = False
        if wide:
            zp = _as_float(zero_point, _F64)
            s = _as_float(scale, _F64)
            if q.flags.f_contiguous and not q.flags.c_contiguous:
                return _core.dequantize(q.T, s, zp).T
            return _core.dequantize(q, s, zp)
    return dequantize_reference(q, scale, zero_point)


def _extremes(values: np.ndarray, found: tuple[float, float, bool, bool]) -> tuple[Any, Any]:
    """(min, max) as numpy scalars of the data dtype from a native scan of ``values``."""
    lo, hi, lo_tie, hi_tie = found
    # With both signs of zero present numpy's pick depends on positions: ask numpy.
    kind = values.dtype.type
    return (
        values.min() if lo_tie else kind(lo),
        values.max() if hi_tie else kind(hi),
    )


def min_max(values: npt.NDArray[Any], name: str = "values") -> tuple[Any, Any]:
    """Native ``min_max_reference`` (one pass) for float32/float64 arrays."""
    if not _native(values, _FLOATS):
        return min_max_reference(values, name)
    return _extremes(values, _core.min_max(values, name))


def copy_min_max(values: Any, name: str = "values") -> tuple[np.ndarray, Any, Any] | None:
    """``(copy.deepcopy(values), *min_max(values, name))`` in one read of the data.

    For float32/float64 arrays contiguous in C or Fortran order: the copy has the dtype,
    shape and memory order numpy's deep copy gives, the extrema and errors are those of
    :func:`min_max`. Returns None for any other input (copy and scan it separately).
    """
    if not _native(values, _FLOATS) or not (values.flags.c_contiguous or values.flags.f_contiguous):
        return None
    fused = _core.copy_min_max(values, name)
    if fused is None:
        return None
    copy, lo, hi, lo_tie, hi_tie = fused
    return (copy, *_extremes(values, (lo, hi, lo_tie, hi_tie)))


def rounded_unique(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Native ``rounded_unique_reference`` for float32/float64 arrays without NaN.

    When the rounded values hold both -0.0 and +0.0, np.unique keeps whichever its SIMD sort
    puts first (position dependent); the kernel keeps -0.0. Values are otherwise identical.
    """
    if _native(values, _FLOATS) and values.ndim > 0:
        out = _core.rounded_unique(values)
        if out is not None:
            return out
    return rounded_unique_reference(values)
