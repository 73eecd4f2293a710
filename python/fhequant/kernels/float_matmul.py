"""Float matmuls whose results do not depend on the batch split (docs/contract.md decision 4).

BLAS sums each dot product in an order (and with FMA or not) that depends on the kernel it
picks, and the kernel depends on the matrix shape: the same row can give a different last bit
in a 7-row and in a 300-row product. One bit of a calibration maximum can flip a rint tie, so
calibration must not use it.

:func:`sequential_matmul` computes every output as the plain sequential sum
``((0 + a0·b0) + a1·b1) + ...`` in k order, each product and each sum rounded to the result
type (no FMA): float32 when both operands are float32, else float64 (numpy's promotion).
Every row is computed the same way whatever the rows around it, so streamed and whole-set
calibration agree bit for bit; this order also reproduces the reference's Gemm results on the
golden modules. The work runs in the native core; ``matmul_sequential_reference``
(:mod:`fhequant.kernels.reference.float_matmul`) is its numpy twin, the specification of its
numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant import _core
from fhequant.kernels.reference.float_matmul import _rows

__all__ = ["matmul_f32_sequential", "sequential_matmul"]


def matmul_f32_sequential(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 ``a @ b`` (b 2-D) summed sequentially in k order, without FMA (native).

    Args:
        a: float32 array (..., n, k).
        b: float32 array (k, m).

    Returns:
        float32 array (..., n, m).
    """
    k, m = b.shape
    out = _core.matmul_f32_sequential(
        np.ascontiguousarray(a.reshape(_rows(a), k), dtype=np.float32),
        np.ascontiguousarray(b, dtype=np.float32),
    )
    return out.reshape(*a.shape[:-1], m)


def sequential_matmul(a: Any, b: Any) -> Any:
    """``a @ b`` with the split-independent kernel when b is a 2-D float matrix.

    Args:
        a: left operand (float32 or float64, at least 1-D).
        b: right operand.

    Returns:
        The product; numpy's matmul for other dtypes or shapes.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    floats = (np.float32, np.float64)
    if b.ndim != 2 or a.ndim < 1 or a.dtype not in floats or b.dtype not in floats:
        return a @ b
    vector = a.ndim == 1
    a2 = a[None, :] if vector else a
    if a.dtype == np.float32 and b.dtype == np.float32:
        out = matmul_f32_sequential(a2, b)
    else:
        k, m = b.shape
        out = _core.matmul_f64_sequential(
            np.ascontiguousarray(a2.reshape(_rows(a2), k), dtype=np.float64),
            np.ascontiguousarray(b, dtype=np.float64),
        ).reshape(*a2.shape[:-1], m)
    return out[0] if vector else out
