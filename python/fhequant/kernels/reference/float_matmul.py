"""The numpy twins of the split-independent float matmuls (:mod:`fhequant.kernels.float_matmul`).

Each output is the plain sequential sum ``((0 + a0·b0) + a1·b1) + ...`` in k order, each
product and each sum rounded to the result type (no FMA).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["matmul_f32_sequential_reference", "matmul_sequential_reference"]


def _rows(a: np.ndarray) -> int:
    """The number of rows of ``a`` as a (rows, k) matrix (also when k is 0)."""
    return int(np.prod(a.shape[:-1], dtype=np.int64))


def matmul_sequential_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy twin: ``a @ b`` (b 2-D) summed sequentially in k order in the result dtype.

    Args:
        a: float array (..., n, k).
        b: float array (k, m).

    Returns:
        (..., n, m) in float32 if both are float32, else float64.
    """
    dtype = np.float32 if a.dtype == np.float32 and b.dtype == np.float32 else np.float64
    k, m = b.shape
    a2 = np.asarray(a, dtype=dtype).reshape(_rows(a), k)
    b2 = np.asarray(b, dtype=dtype)
    out: Any = np.zeros((a2.shape[0], m), dtype=dtype)
    for j in range(k):
        out += a2[:, j : j + 1] * b2[j]
    return out.reshape(*a.shape[:-1], m)


def matmul_f32_sequential_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The float32 case of :func:`matmul_sequential_reference`."""
    return matmul_sequential_reference(a.astype(np.float32), b.astype(np.float32))
