"""The fused Gemm/Conv rescale followed by the output quantizer, dispatched to the native core
(``_core.int_matmul_rescale_quant`` / ``int_conv2d_rescale_quant``).

The float64 result of the rescale is quantized as it is produced and never written: the
kernels return the integers in int8/int16 with their min and max, the numbers of the unfused
rescale followed by ``quantize_narrow``. They return None when that shortcut does not apply
(operands the native rescale does not take, bounds too wide for int16, parameters numpy would
not apply in float64, a NaN result): the caller then takes the unfused path. The numpy twins
are in :mod:`fhequant.kernels.reference.requant`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fhequant import _core
from fhequant.kernels._rescale import rescale_vectors
from fhequant.kernels.quant import _quant_plan
from fhequant.kernels.reference._checks import _check_lsbs
from fhequant.kernels.reference._operands import _conv_operands, _gemm_operands
from fhequant.kernels.reference.requant import narrow_dtype

__all__ = [
    "integer_accumulator_rescale_quant",
    "integer_conv_rescale_quant",
    "integer_gemm_rescale_quant",
    "requant_operands",
]

_PROBE = np.zeros(1)


def requant_operands(quant: Sequence[Any]) -> tuple[float, float, float, float, str] | None:
    """The kernels' (scale, zero_point, lo, hi, dtype) for the output quantizer ``quant`` =
    (scale, zero_point, lo, hi): numpy's float64 operands of quantizing float64 values, or
    None when a step would not run in float64 or no narrow dtype holds the bounds."""
    scale, zero_point, lo, hi = quant
    if lo is None or hi is None:
        return None
    dtype = narrow_dtype(int(lo), int(hi))
    if dtype is None:
        return None
    plan = _quant_plan(_PROBE, scale, zero_point, lo, hi, np.int64)
    if plan is None or not all(plan[4:7]):
        return None
    return plan[0], plan[1], plan[2], plan[3], dtype.name


def _result(out: tuple[Any, int, int, bool]) -> tuple[Any, int, int] | None:
    ints, low, high, nan = out
    return None if nan else (ints, low, high)


def integer_gemm_rescale_quant(
    q_x: Any,
    q_w: Any,
    z_w: Any,
    lsbs: int,
    offset: Any,
    sub: Any,
    mul: Any,
    add: Any,
    quant: Sequence[Any],
    name: str = "Gemm",
) -> tuple[Any, int, int] | None:
    """``integer_gemm_rescale`` quantized by ``quant`` = (scale, zero_point, lo, hi) in one
    native pass: (int8/int16 integers, min, max), or None (see the module docs). An
    int8/int16/int32 ``q_x`` is read as it is (no int64 copy)."""
    operands = requant_operands(quant)
    if operands is None:
        return None
    a, b, _, zw = _gemm_operands(q_x, q_w, 0, z_w, name, check=False, narrow=True)
    k_lsbs = _check_lsbs(lsbs, name)
    if a.size == 0 or b.size == 0 or b.ndim != 2 or a.ndim < 2:
        return None
    n = b.shape[-1]
    vectors = rescale_vectors(offset, sub, mul, add, n, a.ndim, -1)
    if vectors is None:
        return None
    m, k = a.shape[-2:]
    scale, zp, lo, hi, dtype = operands
    out = _core.int_matmul_rescale_quant(
        a.reshape(-1, m, k), b[None], zw, k_lsbs, *vectors, scale, zp, lo, hi, dtype, name
    )
    found = _result(out)
    if found is None:
        return None
    return found[0].reshape(*a.shape[:-1], n), found[1], found[2]


def integer_accumulator_rescale_quant(
    acc: Any,
    lsbs: int,
    offset: Any,
    sub: Any,
    mul: Any,
    add: Any,
    quant: Sequence[Any],
    name: str = "Gemm",
) -> tuple[Any, int, int] | None:
    """:func:`integer_gemm_rescale_quant` of a product already computed: ``acc`` is the int32
    accumulator ``a @ (b - z_w)`` of shape (..., N) (``_core.int_matmul_acc_extremes``
    keeps it); the same integers, min and max, or None (see the module docs)."""
    operands = requant_operands(quant)
    if operands is None:
        return None
    k_lsbs = _check_lsbs(lsbs, name)
    if acc.dtype != np.int32 or acc.ndim < 2 or acc.size == 0:
        return None
    n = acc.shape[-1]
    vectors = rescale_vectors(offset, sub, mul, add, n, acc.ndim, -1)
    if vectors is None:
        return None
    scale, zp, lo, hi, dtype = operands
    flat = np.ascontiguousarray(acc).reshape(-1, n)
    found = _result(
        _core.int_acc_rescale_quant(flat, k_lsbs, *vectors, scale, zp, lo, hi, dtype, name)
    )
    if found is None:
        return None
    return found[0].reshape(acc.shape), found[1], found[2]


def integer_conv_rescale_quant(
    q_x: Any,
    q_w: Any,
    z_x: Any,
    z_w: Any,
    lsbs: int,
    offset: Any,
    sub: Any,
    mul: Any,
    add: Any,
    quant: Sequence[Any],
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    group: int = 1,
    name: str = "Conv",
) -> tuple[Any, int, int] | None:
    """``integer_conv_rescale`` quantized by ``quant`` in one native pass: (int8/int16
    integers, min, max), or None (see the module docs). An int8/int16/int32 ``q_x`` is
    read as it is (no int64 copy)."""
    operands = requant_operands(quant)
    if operands is None:
        return None
    x, w, zx, zw, group, s, p, spatial = _conv_operands(
        q_x, q_w, z_x, z_w, strides, pads, group, name, check=False, narrow=True
    )
    k_lsbs = _check_lsbs(lsbs, name)
    vectors = rescale_vectors(offset, sub, mul, add, w.shape[0], spatial + 2, 1)
    if x.size == 0 or vectors is None:
        return None
    scale, zp, low, high, dtype = operands
    out = _core.int_conv2d_rescale_quant(
        x, w, zw, group, s, p, zx, k_lsbs, *vectors, scale, zp, low, high, dtype, name
    )
    found = _result(out)
    if found is None:
        return None
    ints = found[0]
    if spatial == 1:
        ints = ints.reshape(ints.shape[0], ints.shape[1], ints.shape[3])
    return ints, found[1], found[2]
