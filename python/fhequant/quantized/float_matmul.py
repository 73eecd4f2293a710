"""A float32 matmul whose result does not depend on the batch split (SPEC decision 4).

BLAS sgemm sums each dot product in an order (and with FMA or not) that depends on the kernel
it picks, and the kernel depends on the matrix shape: the same row can give a different last
bit in a 7-row and in a 300-row product. One bit of a calibration maximum can flip a rint tie,
so calibration must not use it on float32 data.

:func:`matmul_f32_sequential` computes every output as the plain sequential float32 sum
``((0 + a0·b0) + a1·b1) + ...`` in k order, each product and each sum rounded to float32 (no
FMA). Every row is computed the same way whatever the rows around it, so streamed and
whole-set calibration agree bit for bit; this order also reproduces the reference's Gemm
results on the golden modules. Float64 operands fall back to numpy's matmul.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant import _core

__all__ = ["matmul_f32_sequential", "matmul_f32_sequential_reference", "sequential_matmul"]

#: Rows processed together; small enough for the accumulator to stay in cache.
_ROW_BLOCK = 512


def matmul_f32_sequential_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`matmul_f32_sequential` (the specification of its numbers).

    Args:
        a: float32 array (..., n, k).
        b: float32 array (k, m) (2-D).

    Returns:
        float32 array (..., n, m).
    """
    if b.ndim != 2:
        raise ValueError("matmul_f32_sequential: b must be 2-D")
    k, m = b.shape
    lead = a.shape[:-1]
    a2 = np.ascontiguousarray(a.reshape(-1, k))
    bt = np.ascontiguousarray(b)
    n = a2.shape[0]
    out = np.zeros((n, m), dtype=np.float32)
    tmp = np.empty((min(n, _ROW_BLOCK), m), dtype=np.float32)
    for r0 in range(0, n, _ROW_BLOCK):
        r1 = min(n, r0 + _ROW_BLOCK)
        acc = out[r0:r1]
        t = tmp[: r1 - r0]
        block = a2[r0:r1]
        for j in range(k):
            np.multiply(block[:, j : j + 1], bt[j], out=t)
            np.add(acc, t, out=acc)
    return out.reshape(*lead, m)


def matmul_f32_sequential(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 ``a @ b`` with each dot product summed sequentially in k order, without FMA.

    Runs the native kernel (rows in parallel; bit-identical to the numpy twin).

    Args:
        a: float32 array (..., n, k).
        b: float32 array (k, m) (2-D).

    Returns:
        float32 array (..., n, m).
    """
    k = b.shape[0]
    lead = a.shape[:-1]
    out = _core.matmul_f32_sequential(
        np.ascontiguousarray(a.reshape(-1, k), dtype=np.float32),
        np.ascontiguousarray(b, dtype=np.float32),
    )
    return out.reshape(*lead, b.shape[1])


def sequential_matmul(a: Any, b: Any) -> Any:
    """``a @ b``: split-independent float32 path when both are float32 and b is 2-D.

    Args:
        a: left operand.
        b: right operand.

    Returns:
        The product (numpy matmul for other dtypes or shapes).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype == np.float32 and b.dtype == np.float32 and b.ndim == 2 and a.ndim >= 1:
        if a.ndim == 1:
            return matmul_f32_sequential(a[None, :], b)[0]
        return matmul_f32_sequential(a, b)
    return a @ b
