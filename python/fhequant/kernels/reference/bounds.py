"""The exact worst-case accumulator ranges (docs/contract.md §7): the numpy twins, in Python
integers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fhequant.errors import OverflowRiskError, ShapeError
from fhequant.kernels.reference._checks import (
    _I64_MAX,
    I64,
    _check_lsbs,
    _int64,
    _integer,
    _round_python,
)
from fhequant.kernels.reference._operands import _box, _conv_bounds_operands
from fhequant.kernels.reference.conv import _pad_reference, _windows


def _finish_bounds(lo: Any, hi: Any, lsbs: int, name: str) -> tuple[I64, I64]:
    """Round Python-int bounds, then check that they fit int64."""
    rlo = np.vectorize(lambda v: _round_python(int(v), lsbs), otypes=[object])(lo)
    rhi = np.vectorize(lambda v: _round_python(int(v), lsbs), otypes=[object])(hi)
    for arr in (rlo, rhi):
        if arr.size and (min(arr.flat) < -_I64_MAX - 1 or max(arr.flat) > _I64_MAX):
            raise OverflowRiskError(
                f"{name}: the accumulator can leave int64; use fewer bits for the inputs or the "
                "weights"
            )
    return rlo.astype(np.int64), rhi.astype(np.int64)


def gemm_bounds_reference(
    q_w: Any, z_w: Any, x_lo: Any, x_hi: Any, lsbs: int = 0, name: str = "Gemm"
) -> tuple[I64, I64]:
    """Exact worst-case range of the corrected Gemm accumulator, per output column.

    min/max over x in [x_lo, x_hi]^K of Σ_k x_k·(W[k, n] - z_w), then round_bit_pattern(lsbs).
    The extreme x takes x_lo where the coefficient is >= 0 and x_hi elsewhere (reversed for
    the max), so both ends are attained.

    Args:
        q_w: integer weights after transB, (K, N) or (..., K, N).
        z_w: weight zero point.
        x_lo: smallest integer input (the input quantizer's clip range).
        x_hi: largest integer input.
        lsbs: bits removed by the "matmul" rounding (<= 0: none).
        name: op name used in error messages.

    Returns:
        (lo, hi), int64 arrays of shape (..., N).
    """
    w = _int64(q_w, "the weights q_w", name)
    zw = _integer(z_w, "the weight zero point z_w", name)
    xl, xh = _box(x_lo, x_hi, name)
    k = _check_lsbs(lsbs, name)
    if w.ndim < 2:
        raise ShapeError(f"{name}: need weights of rank >= 2, got shape {w.shape}")
    c = w.astype(object) - zw
    pos = np.where(c > 0, c, 0).sum(axis=-2)
    neg = np.where(c < 0, c, 0).sum(axis=-2)
    return _finish_bounds(pos * xl + neg * xh, pos * xh + neg * xl, k, name)


def conv_bounds_reference(
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
    """Exact worst-case range of the corrected Conv accumulator, per output channel.

    The min/max over every output position and every input in [x_lo, x_hi] of
    Σ x_pad·(W - z_w), where padding cells hold z_x (and ceil-extension cells 0), then
    round_bit_pattern(lsbs). All input channels share one range, so groups do not matter.

    Args:
        q_w: integer weights (O, C/group, kh, kw) or (O, C/group, k).
        z_w: weight zero point.
        x_lo: smallest integer input.
        x_hi: largest integer input.
        input_shape: spatial input shape (H, W) or (L,).
        z_x: input zero point (the pad value).
        strides: per spatial axis (default 1).
        pads: ONNX order (default 0).
        lsbs: bits removed by the rounding (<= 0: none).
        ceil_mode: 1 adds the 0-extension of ``ceil_mode_extension`` (AveragePool).
        name: op name used in error messages.

    Returns:
        (lo, hi), int64 arrays of shape (O,).
    """
    w, zw, xl, xh, in_hw, s, p, extra, zx, k = _conv_bounds_operands(
        q_w, z_w, x_lo, x_hi, input_shape, z_x, strides, pads, lsbs, ceil_mode, name
    )
    c = w.astype(object) - zw
    pos = np.where(c > 0, c, 0).sum(axis=1).reshape(w.shape[0], -1)  # (O, kh*kw)
    neg = np.where(c < 0, c, 0).sum(axis=1).reshape(w.shape[0], -1)
    inside = np.zeros((1, 1, *in_hw), dtype=np.int64)
    is_input = _pad_reference(inside + 1, p, 0, extra)[0, 0]
    is_pad = _pad_reference(inside, p, 1, extra)[0, 0]
    kh, kw = w.shape[2:]
    win_in = _windows(is_input[None, None], (kh, kw), s)[0, 0].reshape(-1, kh * kw)
    win_pad = _windows(is_pad[None, None], (kh, kw), s)[0, 0].reshape(-1, kh * kw)
    win_in, win_pad = win_in.astype(object), win_pad.astype(object)
    fixed = win_pad @ ((pos + neg).T * zx)  # (positions, O)
    lo = win_in @ (pos * xl + neg * xh).T + fixed
    hi = win_in @ (pos * xh + neg * xl).T + fixed
    return _finish_bounds(lo.min(axis=0), hi.max(axis=0), k, name)


def window_sum_bounds_reference(
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
    """Exact worst-case range of the AveragePool window sums (docs/contract.md §3.6), then rounded.

    Args:
        kernel_shape: window size per spatial axis.
        input_shape: spatial input shape (H, W) or (L,).
        z_x: input zero point (the pad value).
        x_lo: smallest integer input.
        x_hi: largest integer input.
        strides: per spatial axis (default 1).
        pads: ONNX order (default 0).
        ceil_mode: 1 adds the 0-extension.
        lsbs: bits removed by the rounding (<= 0: none).
        name: op name used in error messages.

    Returns:
        (lo, hi) as Python ints.
    """
    ones = np.ones((1, 1, *kernel_shape), dtype=np.int64)
    lo, hi = conv_bounds_reference(
        ones, 0, x_lo, x_hi, input_shape, z_x, strides, pads, lsbs, ceil_mode, name
    )
    return int(lo[0]), int(hi[0])
