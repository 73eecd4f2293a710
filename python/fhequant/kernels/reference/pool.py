"""Integer pools and Unfold (docs/contract.md §3.6): the numpy twins."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhequant.kernels.reference._checks import I64
from fhequant.kernels.reference._operands import _pool_operands, _unfold_operands
from fhequant.kernels.reference.conv import _pad_reference, _windows


def window_sum_reference(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    ceil_mode: int = 0,
    name: str = "AveragePool",
) -> I64:
    """Integer window sums of AveragePool (docs/contract.md §3.6).

    Args:
        q_x: integer input (N, C, H, W) or (N, C, L).
        kernel_shape: window size per spatial axis.
        strides: per spatial axis (default 1).
        pads: ONNX order (default 0), filled with z_x.
        z_x: input zero point.
        ceil_mode: 1 adds 0-padding at the ends up to the ceil output size.
        name: op name used in error messages.

    Returns:
        int64 sums (N, C, OH, OW) (or (N, C, OL)). The ceil-mode norm (cells per window that
        are not extension) is ``window_sum(ones, ..., z_x=1, ceil_mode=1)``.
    """
    x, k, s, p, extra, zx, one_d = _pool_operands(
        q_x, kernel_shape, strides, pads, z_x, ceil_mode, name, check_sum=True
    )
    out = _windows(_pad_reference(x, p, zx, extra), k, s).sum(axis=(4, 5))
    return out[:, :, 0, :] if one_d else out


def window_max_reference(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    name: str = "MaxPool",
) -> I64:
    """Integer MaxPool (ceil_mode 0): the max of each window of q_x padded with z_x.

    Args:
        q_x: integer input (N, C, H, W) or (N, C, L).
        kernel_shape: window size per spatial axis.
        strides: per spatial axis (default 1).
        pads: ONNX order (default 0), filled with z_x.
        z_x: input zero point.
        name: op name used in error messages.

    Returns:
        int64 maxima (N, C, OH, OW) (or (N, C, OL)).
    """
    x, k, s, p, _, zx, one_d = _pool_operands(q_x, kernel_shape, strides, pads, z_x, 0, name)
    out = _windows(_pad_reference(x, p, zx), k, s).max(axis=(4, 5))
    return out[:, :, 0, :] if one_d else out


def unfold_reference(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    name: str = "Unfold",
) -> I64:
    """Integer Unfold (docs/contract.md §3.6): the windows of q_x padded with z_x, as columns.

    Args:
        q_x: integer input (N, C, H, W).
        kernel_shape: window size (kh, kw).
        strides: (sh, sw) (default 1).
        pads: ONNX order (default 0), filled with z_x.
        z_x: input zero point.
        name: op name used in error messages.

    Returns:
        int64 (N, C·kh·kw, L), row c·kh·kw + i·kw + j, column oh·OW + ow (torch order).
    """
    x, k, s, p, zx = _unfold_operands(q_x, kernel_shape, strides, pads, z_x, name)
    win = _windows(_pad_reference(x, p, zx), k, s)
    n, c, oh, ow = win.shape[:4]
    return win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * k[0] * k[1], oh * ow)
