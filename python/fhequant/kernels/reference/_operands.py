"""Operand normalisation and window geometry shared by both twins of every integer kernel.

Before any product the worst-case accumulator is bounded from the operand ranges
(terms·max|x|·max|w - z_w|); if int64 could overflow, OverflowRiskError is raised, naming
the op, the operands' ranges and their bit widths. The reference twins run this check here;
the native kernels run the same check in the core.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fhequant.errors import OverflowRiskError, QuantizationError, QuantizedOpError, ShapeError
from fhequant.kernels.limits import check_sample_elements, check_window_geometry
from fhequant.kernels.reference._checks import (
    _I64_MAX,
    I64,
    _check_lsbs,
    _int64,
    _integer,
    _range,
)
from fhequant.kernels.reference.rounding import bit_width_reference


def _describe(lo: int, hi: int) -> str:
    bits = bit_width_reference(lo, hi)
    return f"[{lo}, {hi}] ({'int' if lo < 0 else 'uint'}{bits})"


def _check_bound(terms: int, x: tuple[int, int], c: tuple[int, int], what: str, name: str) -> None:
    """OverflowRiskError unless terms·max|x|·max|c| fits int64 (the kernels' criterion)."""
    bound = terms * max(abs(x[0]), abs(x[1])) * max(abs(c[0]), abs(c[1]))
    if bound > _I64_MAX:
        raise OverflowRiskError(
            f"{name}: the int64 accumulator could overflow: {what} over {terms} terms: the "
            f"input {_describe(*x)} and the weights {_describe(*c)} give a worst case of "
            f"about 2^{math.log2(bound):.1f}; use fewer bits for the inputs or the weights"
        )


def _pairs(
    values: Sequence[int] | None, count: int, default: int, what: str, name: str
) -> list[int]:
    if values is None:
        return [default] * count
    out = [_integer(v, what, name) for v in values]
    positive = what in ("strides", "kernel_shape")
    if len(out) != count or any(v < int(positive) for v in out):
        low = "positive" if positive else "non-negative"
        raise QuantizedOpError(f"{name}: {what} must be {count} {low} integers, got {values!r}")
    return out


def _geometry_2d(
    spatial: int,
    kernel: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    name: str,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    """(kernel, strides, pads) of the 2-D form; 1-D runs as 2-D with H = 1."""
    if spatial not in (1, 2):
        raise ShapeError(f"{name}: only 1-D and 2-D windows are supported, got {spatial}-D")
    k = _pairs(kernel, spatial, 1, "kernel_shape", name)
    s = _pairs(strides, spatial, 1, "strides", name)
    p = _pairs(pads, 2 * spatial, 0, "pads", name)
    if spatial == 1:
        return (1, k[0]), (1, s[0]), (0, p[0], 0, p[1])
    return (k[0], k[1]), (s[0], s[1]), (p[0], p[1], p[2], p[3])


def _check_sizes(
    x4: I64,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    extra: Sequence[int],
    name: str,
) -> None:
    """The padded input and gathered windows of a 2-D-form window op, per sample (limits)."""
    ends = (pads[2] + extra[0], pads[3] + extra[1])
    check_window_geometry(x4.shape[1], x4.shape[2:], kernel, strides, (1, 1), pads[:2], ends, name)


def _as_4d(x: I64, spatial: int) -> I64:
    return x[:, :, None, :] if spatial == 1 else x


def ceil_mode_extension(
    in_hw: Sequence[int], kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int]
) -> tuple[int, int]:
    """The 0-padding that ceil_mode adds at the end of each axis (2-D form).

    The output size becomes ceil((size + pads - k) / s) + 1, less one if the last window
    would start past the input and its begin padding (the ONNX/PyTorch rule); the extension
    is what the last window needs beyond the end padding.
    """
    extra = []
    for axis in (0, 1):
        size, k, s = in_hw[axis], kernel[axis], strides[axis]
        total = size + pads[axis] + pads[axis + 2]
        out = -(-(total - k) // s) + 1
        if (out - 1) * s >= size + pads[axis]:
            out -= 1
        extra.append(max(0, (out - 1) * s + k - total))
    return extra[0], extra[1]


def _gemm_operands(
    q_x: Any, q_w: Any, z_x: Any, z_w: Any, name: str, check: bool, narrow: bool = False
) -> tuple[Any, I64, int, int]:
    """The checked Gemm operands; with ``narrow`` an int8/int16/int32 input is kept in its
    own dtype (for the native kernels that read it unwidened)."""
    a = _narrow_input(q_x, name) if narrow else _int64(q_x, "the input q_x", name)
    b = _int64(q_w, "the weights q_w", name)
    zx = _integer(z_x, "the input zero point z_x", name)
    zw = _integer(z_w, "the weight zero point z_w", name)
    if a.ndim < 1 or b.ndim < 2:
        raise ShapeError(
            f"{name}: need an input of rank >= 1 and weights of rank >= 2, got shapes "
            f"{a.shape} and {b.shape}"
        )
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(
            f"{name}: the input's last axis ({a.shape[-1]}) differs from the weights' inner "
            f"axis ({b.shape[-2]}); shapes {a.shape} and {b.shape}"
        )
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ShapeError(
            f"{name}: the batch axes of {a.shape} and {b.shape} do not broadcast"
        ) from None
    if check:  # the native kernels run the same check themselves
        k = b.shape[-2]
        wlo, whi = _range(b)
        what = "a matmul with the weights minus z_w"
        _check_bound(k, _range(a), (wlo - zw, whi - zw), what, name)
        _check_bound(k, (zx, zx), (wlo, whi), "z_x times the weight sums", name)
    return a, b, zx, zw


def _conv_operands(
    q_x: Any,
    q_w: Any,
    z_x: Any,
    z_w: Any,
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    group: int,
    name: str,
    check: bool,
    narrow: bool = False,
) -> tuple[I64, I64, int, int, int, Any, Any, int]:
    """The checked conv operands in their 2-D form; with ``narrow`` an int8/int16/int32
    input is kept in its own dtype (for the native kernels that read it unwidened)."""
    x = _narrow_input(q_x, name) if narrow else _int64(q_x, "the input q_x", name)
    w = _int64(q_w, "the weights q_w", name)
    zx = _integer(z_x, "the input zero point z_x", name)
    zw = _integer(z_w, "the weight zero point z_w", name)
    group = _integer(group, "group", name)
    spatial = x.ndim - 2
    if x.ndim not in (3, 4) or w.ndim != x.ndim:
        raise ShapeError(
            f"{name}: need an (N, C, H, W) or (N, C, L) input and weights of the same rank, "
            f"got shapes {x.shape} and {w.shape}"
        )
    _, s, p = _geometry_2d(spatial, w.shape[2:], strides, pads, name)
    x4, w4 = _as_4d(x, spatial), _as_4d(w, spatial)
    if group < 1 or x4.shape[1] != w4.shape[1] * group or w4.shape[0] % group:
        raise ShapeError(
            f"{name}: group={group} does not fit the input channels ({x4.shape[1]}) and the "
            f"weights {w.shape}; need channels = group x weights.shape[1] and "
            "weights.shape[0] divisible by group"
        )
    for axis in (0, 1):
        if x4.shape[2 + axis] + p[axis] + p[axis + 2] < w4.shape[2 + axis]:
            raise ShapeError(f"{name}: the padded input {x.shape} is smaller than the kernel")
    _check_sizes(x4, w4.shape[2:], s, p, (0, 0), name)
    if check:  # the native kernels run the same check themselves
        xlo, xhi = _range(x4)
        if any(p):
            xlo, xhi = min(xlo, zx), max(xhi, zx)
        wlo, whi = _range(w4)
        terms = int(np.prod(w4.shape[1:]))
        what = "a conv with the weights minus z_w"
        _check_bound(terms, (xlo, xhi), (wlo - zw, whi - zw), what, name)
        _check_bound(terms, (zx, zx), (wlo, whi), "z_x times the weight sums", name)
    return x4, w4, zx, zw, group, s, p, spatial


_NARROW_INPUTS = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))


def _narrow_input(q_x: Any, name: str) -> Any:
    """``q_x`` as it is if it holds int8, int16 or int32, else as int64."""
    arr = np.asarray(q_x)
    if arr.dtype in _NARROW_INPUTS:
        return arr
    return _int64(arr, "the input q_x", name)


def _pool_operands(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    ceil_mode: int,
    name: str,
    check_sum: bool = False,
) -> tuple[I64, tuple[int, int], Any, Any, tuple[int, int], int, bool]:
    x = _int64(q_x, "the input q_x", name)
    zx = _integer(z_x, "the input zero point z_x", name)
    if x.ndim not in (3, 4):
        raise ShapeError(f"{name}: need an (N, C, H, W) or (N, C, L) input, got {x.shape}")
    spatial = x.ndim - 2
    k, s, p = _geometry_2d(spatial, kernel_shape, strides, pads, name)
    x4 = _as_4d(x, spatial)
    if ceil_mode not in (0, 1):
        raise QuantizedOpError(f"{name}: ceil_mode must be 0 or 1, got {ceil_mode!r}")
    extra = ceil_mode_extension(x4.shape[2:], k, s, p) if ceil_mode else (0, 0)
    for axis in (0, 1):
        if x4.shape[2 + axis] + p[axis] + p[axis + 2] + extra[axis] < k[axis]:
            raise ShapeError(f"{name}: the padded input {x.shape} is smaller than the kernel {k}")
    _check_sizes(x4, k, s, p, extra, name)
    if check_sum:  # the native window sum runs the same check itself
        xlo, xhi = _range(x4)
        if any(p):
            xlo, xhi = min(xlo, zx), max(xhi, zx)
        if any(extra):
            xlo, xhi = min(xlo, 0), max(xhi, 0)
        _check_bound(k[0] * k[1], (xlo, xhi), (1, 1), "a window sum", name)
    return x4, k, s, p, extra, zx, spatial == 1


def _unfold_operands(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    name: str,
) -> tuple[I64, tuple[int, int], Any, Any, int]:
    x = _int64(q_x, "the input q_x", name)
    zx = _integer(z_x, "the input zero point z_x", name)
    if x.ndim != 4:
        raise ShapeError(f"{name}: need an (N, C, H, W) input, got {x.shape}")
    k, s, p = _geometry_2d(2, kernel_shape, strides, pads, name)
    for axis in (0, 1):
        if x.shape[2 + axis] + p[axis] + p[axis + 2] < k[axis]:
            raise ShapeError(f"{name}: the padded input {x.shape} is smaller than the kernel {k}")
    _check_sizes(x, k, s, p, (0, 0), name)
    return x, k, s, p, zx


def _conv_bounds_operands(
    q_w: Any,
    z_w: Any,
    x_lo: Any,
    x_hi: Any,
    input_shape: Sequence[int],
    z_x: Any,
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    lsbs: int,
    ceil_mode: int,
    name: str,
) -> tuple[I64, int, int, int, tuple[int, int], Any, Any, tuple[int, int], int, int]:
    w = _int64(q_w, "the weights q_w", name)
    zw = _integer(z_w, "the weight zero point z_w", name)
    zx = _integer(z_x, "the input zero point z_x", name)
    xl, xh = _box(x_lo, x_hi, name)
    k = _check_lsbs(lsbs, name)
    spatial = w.ndim - 2
    if spatial not in (1, 2) or len(input_shape) != spatial:
        raise ShapeError(
            f"{name}: need (O, C/group, kh, kw) or (O, C/group, k) weights and a matching "
            f"spatial input shape, got {w.shape} and {tuple(input_shape)}"
        )
    ksz, s, p = _geometry_2d(spatial, w.shape[2:], strides, pads, name)
    in_hw = (1, int(input_shape[0])) if spatial == 1 else (int(input_shape[0]), int(input_shape[1]))
    extra = ceil_mode_extension(in_hw, ksz, s, p) if ceil_mode else (0, 0)
    for axis in (0, 1):
        if in_hw[axis] + p[axis] + p[axis + 2] + extra[axis] < ksz[axis]:
            raise ShapeError(
                f"{name}: the padded input {tuple(input_shape)} is smaller than the kernel"
            )
    out = [(in_hw[a] + p[a] + p[a + 2] + extra[a] - ksz[a]) // s[a] + 1 for a in (0, 1)]
    check_sample_elements(int(w.shape[0]) * out[0] * out[1], f"the output {out}", name)
    return _as_4d(w, spatial), zw, xl, xh, in_hw, s, p, extra, zx, k


def _box(x_lo: Any, x_hi: Any, name: str) -> tuple[int, int]:
    lo = _integer(x_lo, "x_lo", name)
    hi = _integer(x_hi, "x_hi", name)
    if lo > hi:
        raise QuantizationError(f"{name}: the input range [{lo}, {hi}] is empty; give x_lo <= x_hi")
    return lo, hi
