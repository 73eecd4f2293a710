"""The numpy twins of the quantization kernels (quantize, dequantize, min/max, unique).

Each twin is written with plain numpy 1.26 and *is* the specification (docs/contract.md §0, §1.2,
§1.4); the property tests check the dispatched kernels of :mod:`fhequant.kernels.quant`
against them bit for bit.

Dtype rules that matter (numpy 1.26 value-based promotion):
* ``values / scale`` with float32 ``values`` and a float64 scalar ``scale`` is computed in
  float32 with the scale first rounded to float32;
* ``+ zero_point`` stays float32 when the zero point is an integer in [-32768, 65535] and is
  done in float64 otherwise;
* a 0-d array behaves as a scalar, so it quantizes in float64 and gives numpy scalars.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from fhequant.errors import EmptyTensorError, NonFiniteError


def quantize_reference(
    values: npt.NDArray[np.floating[Any]],
    scale: np.float64,
    zero_point: Any,
    lo: int | None,
    hi: int | None,
    dtype: npt.DTypeLike = np.int64,
) -> Any:
    """rint(values / scale + zero_point), clipped to [lo, hi] unless lo is None, cast."""
    q = np.rint(values / scale + zero_point)
    if lo is not None:
        q = np.clip(q, lo, hi)
    return q.astype(dtype)


def dequantize_reference(q: Any, scale: Any, zero_point: Any) -> Any:
    """scale * (q - float64(zero_point)), in float64; the zero point may be an array."""
    return scale * (q - np.asarray(zero_point).astype(np.float64))


def min_max_reference(values: npt.NDArray[Any], name: str = "values") -> tuple[Any, Any]:
    """(min, max) over all elements as numpy scalars of the data dtype.

    Raises EmptyTensorError for an empty tensor and NonFiniteError for NaN/Inf.
    """
    if values.size == 0:
        raise EmptyTensorError(f"{name}: the tensor is empty; give at least one value")
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values)
        if bad.any():
            index = int(np.flatnonzero(bad.ravel())[0])
            raise NonFiniteError(
                f"{name}: found a non-finite value ({values.ravel()[index]}) at flat index "
                f"{index}; remove NaN/Inf from the data before calibrating"
            )
    return values.min(), values.max()


def rounded_unique_reference(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Sorted unique values of numpy's 2-decimal round (rint(v*100)/100 in the data dtype)."""
    return np.unique(np.round(values, 2))
