"""Integer Conv, 1-D or 2-D (docs/contract.md §3.2): the numpy twins, with the padding and window
views that the pool twins and the bounds share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fhequant.kernels.reference._checks import I64, _check_lsbs
from fhequant.kernels.reference._operands import _conv_operands
from fhequant.kernels.reference.rescale import float64_rescale
from fhequant.kernels.reference.rounding import round_bit_pattern_reference


def _pad_reference(x: I64, pads: Sequence[int], value: int, extra: Sequence[int] = (0, 0)) -> I64:
    """Pad (N, C, H, W) with value by [h_b, w_b, h_e, w_e], then with 0 by extra ends."""
    widths = ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3]))
    xp = np.pad(x, widths, mode="constant", constant_values=value)
    ends = ((0, 0), (0, 0), (0, extra[0]), (0, extra[1]))
    return np.pad(xp, ends, mode="constant", constant_values=0)


def _windows(xp: I64, kernel: Sequence[int], strides: Sequence[int]) -> I64:
    """(N, C, OH, OW, kh, kw) view of the windows of a padded (N, C, H, W) array."""
    win = sliding_window_view(xp, tuple(kernel), axis=(2, 3))  # type: ignore[call-overload]
    return win[:, :, :: strides[0], :: strides[1]]


def integer_conv_reference(
    q_x: Any,
    q_w: Any,
    z_x: Any = 0,
    z_w: Any = 0,
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    group: int = 1,
    name: str = "Conv",
) -> tuple[I64, I64]:
    """Zero-point-corrected integer Conv, 1-D or 2-D, dilation 1 (docs/contract.md §3.2).

    Args:
        q_x: integer input (N, C, H, W) or (N, C, L).
        q_w: integer weights (O, C/group, kh, kw) or (O, C/group, k).
        z_x: input zero point, also the pad value.
        z_w: weight zero point.
        strides: per spatial axis (default 1).
        pads: ONNX order, begins then ends (default 0).
        group: number of channel groups.
        name: op name used in error messages.

    Returns:
        (acc, sum_w): acc = conv(x_pad, w) - z_w·conv(x_pad, ones) as (N, O, OH, OW) (or
        (N, O, OL)); sum_w = z_x·Σ_{c,kh,kw} q_w as (1, O, 1, 1) (or (1, O, 1)).
    """
    x, w, zx, zw, group, s, p, spatial = _conv_operands(
        q_x, q_w, z_x, z_w, strides, pads, group, name, check=True
    )
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    win = _windows(_pad_reference(x, p, zx), (kh, kw), s)
    oh, ow = win.shape[2:4]
    win = win.reshape(n, group, cg, oh, ow, kh, kw)
    wg = (w - zw).reshape(group, o // group, cg, kh, kw)
    acc = np.einsum("ngcyxij,gocij->ngoyx", win, wg).reshape(n, o, oh, ow)
    sum_w = zx * w.sum(axis=(1, 2, 3)).reshape(1, o, 1, 1)
    if spatial == 1:
        return acc[:, :, 0, :], sum_w[:, :, 0, :]
    return acc, sum_w


def integer_conv_rescale_reference(
    q_x: Any,
    q_w: Any,
    z_x: Any,
    z_w: Any,
    lsbs: int,
    offset: Any,
    sub: Any,
    mul: Any,
    add: Any = None,
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    group: int = 1,
    name: str = "Conv",
) -> Any:
    """The clear Conv up to its output quantization (docs/contract.md §3.2, §2.4).

    ``v = ((float64(round(acc)) + offset) - sub)·mul (+ add)`` with ``acc`` the corrected
    conv of :func:`integer_conv_reference` and ``round`` the round_bit_pattern of ``lsbs``
    bits (none for lsbs <= 0): the numpy steps of ``QuantizedConv.q_impl``.

    Args:
        q_x: integer input (N, C, H, W) or (N, C, L).
        q_w: integer weights (O, C/group, kh, kw) or (O, C/group, k).
        z_x: input zero point, also the pad value.
        z_w: weight zero point.
        lsbs: bits removed by the rounding of the accumulator.
        offset: added first (C/group·kh·kw·z_x·z_w).
        sub: subtracted next (z_x·Σ q_w per channel, e.g. shape (1, O, 1, 1)).
        mul: multiplied next (s_x·s_w).
        add: added last (the float bias), or None.
        strides: per spatial axis (default 1).
        pads: ONNX order, begins then ends (default 0).
        group: number of channel groups.
        name: op name used in error messages.

    Returns:
        The float values (numpy's dtype and shape for these operands).
    """
    acc, _ = integer_conv_reference(
        q_x, q_w, z_x, z_w, strides=strides, pads=pads, group=group, name=name
    )
    if _check_lsbs(lsbs, name) > 0:
        acc = round_bit_pattern_reference(acc, lsbs, name)
    return float64_rescale(acc, offset, sub, mul, add)
