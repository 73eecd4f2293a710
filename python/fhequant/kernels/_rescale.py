"""The float64 rescale operands as the fused native kernels take them."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def _along_axis(operand: Any, size: int, ndim: int, axis: int) -> npt.NDArray[np.float64] | None:
    """``operand`` as the float64 vector (size,) that a float64 array of rank ``ndim`` meets
    in a ufunc, or None unless the result stays float64 with that shape and the operand
    varies along ``axis`` only."""
    arr = np.asarray(operand)
    if arr.dtype.kind not in "biuf" or arr.ndim > ndim:
        return None
    if np.result_type(np.float64, arr) != np.float64:
        return None
    shape = (1,) * (ndim - arr.ndim) + arr.shape
    if shape[axis] not in (1, size) or any(d != 1 for i, d in enumerate(shape) if i != axis % ndim):
        return None
    wide = arr.astype(np.float64).reshape(-1)
    return np.ascontiguousarray(np.broadcast_to(wide, (size,)))


def rescale_vectors(
    offset: Any, sub: Any, mul: Any, add: Any, size: int, ndim: int, axis: int
) -> tuple[float, Any, Any, Any] | None:
    """(offset, sub, mul, add) as the fused kernels take them (a float and float64 vectors
    of length ``size`` along ``axis``), or None when numpy's broadcasting of an operand is
    not that (the caller then runs the reference steps)."""
    first = _along_axis(offset, 1, ndim, axis)
    vectors = [_along_axis(v, size, ndim, axis) for v in (sub, mul)]
    bias = None if add is None else _along_axis(add, size, ndim, axis)
    if first is None or vectors[0] is None or vectors[1] is None:
        return None
    if add is not None and bias is None:
        return None
    return float(first[0]), vectors[0], vectors[1], bias
