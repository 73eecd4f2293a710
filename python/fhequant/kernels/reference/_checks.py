"""Argument checks shared by both twins of every integer kernel.

All integer inputs are cast to int64 (non-integer dtypes raise DTypeError); zero points and
bit counts must be integer scalars. The native kernels run these same checks before calling
the core, so both twins reject the same inputs with the same errors.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
import numpy.typing as npt

from fhequant.errors import DTypeError, OverflowRiskError, QuantizationError, QuantizedOpError

I64 = npt.NDArray[np.int64]
_I64_MAX = int(np.iinfo(np.int64).max)
_MAX_LSBS = 62


def _int64(values: Any, what: str, name: str) -> I64:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iub":
        raise DTypeError(f"{name}: {what} must hold integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > _I64_MAX:
        raise OverflowRiskError(f"{name}: {what} holds values above the int64 maximum")
    return arr.astype(np.int64, copy=False)


def _integer(value: Any, what: str, name: str) -> int:
    """An integer scalar (Python/numpy int, integral float, or size-1 integer array)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)):
        raise QuantizedOpError(f"{name}: {what} must be an integer scalar, got {value!r}")
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise QuantizedOpError(f"{name}: {what} must be an integer scalar, got {value!r}")


def _range(arr: I64) -> tuple[int, int]:
    return (int(arr.min()), int(arr.max())) if arr.size else (0, 0)


def _round_python(v: int, lsbs: int) -> int:
    return v if lsbs <= 0 else ((v + (1 << (lsbs - 1))) >> lsbs) << lsbs


def _check_lsbs(lsbs: int, name: str) -> int:
    lsbs = _integer(lsbs, "lsbs", name)
    if lsbs > _MAX_LSBS:
        raise QuantizationError(
            f"{name}: cannot remove {lsbs} bits from an int64 value; give at most {_MAX_LSBS}"
        )
    return lsbs
