"""Integer Gemm / MatMul (docs/contract.md §3.1), dispatched to the native core.

The numpy twins are in :mod:`fhequant.kernels.reference.gemm`; they also serve the operands
the native kernels do not take (empty operands, batched weights of the fused rescale, an
operand that numpy would broadcast differently).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant import _core
from fhequant.kernels._rescale import rescale_vectors
from fhequant.kernels.reference._checks import I64, _check_lsbs
from fhequant.kernels.reference._operands import _gemm_operands
from fhequant.kernels.reference.gemm import (
    integer_gemm_reference,
    integer_gemm_rescale_reference,
)


def integer_gemm(
    q_x: Any, q_w: Any, z_x: Any = 0, z_w: Any = 0, name: str = "Gemm"
) -> tuple[I64, I64]:
    a, b, zx, zw = _gemm_operands(q_x, q_w, z_x, z_w, name, check=False, narrow=True)
    if a.size == 0 or b.size == 0:
        # Nothing to accumulate (an empty batch): numpy gives the right empty shapes.
        return integer_gemm_reference(a, b, zx, zw, name)
    vector = a.ndim == 1
    if vector:
        a = a[None, :]
    (m, k), n = a.shape[-2:], b.shape[-1]
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = np.broadcast_to(a, (*batch, m, k)).reshape(-1, m, k)
    b3 = b[None] if b.ndim == 2 else np.broadcast_to(b, (*batch, k, n)).reshape(-1, k, n)
    acc = _core.int_matmul(a3, b3, zw, name).reshape(*batch, m, n)
    if vector:
        acc = acc[..., 0, :]
    sums = _core.int_matmul_weight_sums(b.reshape(-1, k, n), zx, name)
    return acc, sums.reshape(*b.shape[:-2], 1, n)


def integer_gemm_rescale(
    q_x: Any,
    q_w: Any,
    z_w: Any,
    lsbs: int,
    offset: Any,
    sub: Any,
    mul: Any,
    add: Any = None,
    name: str = "Gemm",
) -> Any:
    a, b, _, zw = _gemm_operands(q_x, q_w, 0, z_w, name, check=False, narrow=True)
    k_lsbs = _check_lsbs(lsbs, name)
    if a.size == 0 or b.size == 0 or b.ndim != 2 or a.ndim < 2:
        return integer_gemm_rescale_reference(a, b, zw, k_lsbs, offset, sub, mul, add, name)
    n = b.shape[-1]
    vectors = rescale_vectors(offset, sub, mul, add, n, a.ndim, -1)
    if vectors is None:
        return integer_gemm_rescale_reference(a, b, zw, k_lsbs, offset, sub, mul, add, name)
    m, k = a.shape[-2:]
    v = _core.int_matmul_rescale(a.reshape(-1, m, k), b[None], zw, k_lsbs, *vectors, name)
    return v.reshape(*a.shape[:-1], n)
