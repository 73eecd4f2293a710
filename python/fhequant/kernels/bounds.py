"""The exact worst-case accumulator ranges (docs/contract.md §7), dispatched to the native core.

The numpy twins are in :mod:`fhequant.kernels.reference.bounds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fhequant import _core
from fhequant.errors import ShapeError
from fhequant.kernels.reference._checks import I64, _check_lsbs, _int64, _integer
from fhequant.kernels.reference._operands import _box, _conv_bounds_operands


def gemm_bounds(
    q_w: Any, z_w: Any, x_lo: Any, x_hi: Any, lsbs: int = 0, name: str = "Gemm"
) -> tuple[I64, I64]:
    w = _int64(q_w, "the weights q_w", name)
    zw = _integer(z_w, "the weight zero point z_w", name)
    xl, xh = _box(x_lo, x_hi, name)
    k = _check_lsbs(lsbs, name)
    if w.ndim < 2:
        raise ShapeError(f"{name}: need weights of rank >= 2, got shape {w.shape}")
    kk, n = w.shape[-2:]
    lo, hi = _core.int_gemm_bounds(w.reshape(-1, kk, n), zw, xl, xh, k, name)
    return lo.reshape(*w.shape[:-2], n), hi.reshape(*w.shape[:-2], n)


def conv_bounds(
    q_w: Any,
    z_w: Any,
    x_lo: Any,
    x_hi: Any,
    input_shape: Sequence[int],
    z_x: Any,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    lsbs: int = 0,
    ceil_mode: int = 0,
    name: str = "Conv",
) -> tuple[I64, I64]:
    w, zw, xl, xh, in_hw, s, p, extra, zx, k = _conv_bounds_operands(
        q_w, z_w, x_lo, x_hi, input_shape, z_x, strides, pads, lsbs, ceil_mode, name
    )
    return _core.int_conv_bounds(w, zw, xl, xh, in_hw, s, p, extra, zx, k, name)


def window_sum_bounds(
    kernel_shape: Sequence[int],
    input_shape: Sequence[int],
    z_x: Any,
    x_lo: Any,
    x_hi: Any,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    ceil_mode: int = 0,
    lsbs: int = 0,
    name: str = "AveragePool",
) -> tuple[int, int]:
    ones = np.ones((1, 1, *kernel_shape), dtype=np.int64)
    lo, hi = conv_bounds(
        ones, 0, x_lo, x_hi, input_shape, z_x, strides, pads, lsbs, ceil_mode, name
    )
    return int(lo[0]), int(hi[0])
