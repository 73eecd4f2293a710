"""Integer kernels of the quantized ops, with numpy semantics, dispatched to the native core.

Every function has a ``*_reference`` twin in plain numpy: the twin *is* the specification
(SPEC.md §2.4, §3.1, §3.2, §3.6, §7) and the property tests check the dispatched version
against it exactly. Ops call the dispatched names. All integer inputs are cast to int64
(non-integer dtypes raise DTypeError); zero points must be integer scalars.

Stable API (used by the PTQ ops):

* ``integer_gemm(q_x, q_w, z_x=0, z_w=0, name="Gemm") -> (acc, sum_w)``. ``q_x`` is
  (..., M, K) (or (K,)), ``q_w`` is (K, N) or batched (..., K, N), already transposed
  (SPEC §3.1: B after transB). ``acc = q_x @ q_w - z_w·Σ_k q_x[..., k]`` (int64, shape of
  ``q_x @ q_w``); ``sum_w = z_x·Σ_k q_w[..., k, :]`` with keepdims ((1, N) for 2-D weights).
  The caller adds ``p·z_x·z_w - sum_w`` (p = K) after rounding.
* ``integer_gemm_rescale(q_x, q_w, z_w, lsbs, offset, sub, mul, add=None, name)``: the
  rounding and float64 rescale of a hidden Gemm fused with its matmul (one native pass).
* ``integer_conv(q_x, q_w, z_x=0, z_w=0, *, strides, pads, group, name) -> (acc, sum_w)``:
  NCHW (or NCL) input padded with z_x, ``acc = conv(x_pad, w) - z_w·conv(x_pad, 1)``,
  ``sum_w = z_x·Σ_{c,kh,kw} q_w`` as (1, O, 1, 1) ((1, O, 1) in 1-D).
* ``integer_conv_rescale(q_x, q_w, z_x, z_w, lsbs, offset, sub, mul, add=None, *, ...)``:
  the rounding and float64 rescale of a hidden Conv fused with its conv (one native pass).
* ``window_sum(q_x, kernel_shape, strides, pads, z_x, ceil_mode=0)`` (AveragePool) and
  ``window_max(q_x, kernel_shape, strides, pads, z_x)`` (MaxPool).
* ``unfold(q_x, kernel_shape, strides, pads, z_x)`` (Unfold, torch column order).
* ``round_bit_pattern(x, lsbs)``; ``bit_width(lo, hi)``.
* ``gemm_bounds``, ``conv_bounds``, ``window_sum_bounds``: the exact worst-case
  accumulator range over the input quantizer's integer range (after rounding).

Before any product the worst-case accumulator is bounded from the operand ranges
(terms·max|x|·max|w - z_w|); if int64 could overflow, OverflowRiskError is raised, naming
the op, the operands' ranges and their bit widths. The result is never silently wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from fhequant import _core
from fhequant.errors import (
    DTypeError,
    OverflowRiskError,
    QuantizationError,
    QuantizedOpError,
    ShapeError,
)

__all__ = [
    "bit_width",
    "bit_width_reference",
    "ceil_mode_extension",
    "conv_bounds",
    "conv_bounds_reference",
    "gemm_bounds",
    "gemm_bounds_reference",
    "integer_conv",
    "integer_conv_reference",
    "integer_conv_rescale",
    "integer_conv_rescale_reference",
    "integer_gemm",
    "integer_gemm_reference",
    "integer_gemm_rescale",
    "integer_gemm_rescale_reference",
    "round_bit_pattern",
    "round_bit_pattern_reference",
    "unfold",
    "unfold_reference",
    "window_max",
    "window_max_reference",
    "window_sum",
    "window_sum_bounds",
    "window_sum_bounds_reference",
    "window_sum_reference",
]

I64 = npt.NDArray[np.int64]
_I64_MAX = int(np.iinfo(np.int64).max)
_MAX_LSBS = 62


# --- argument checks shared by both twins ----------------------------------------------------


def _int64(values: Any, what: str, name: str) -> I64:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iub":
        raise DTypeError(f"{name}: {what} must hold integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > _I64_MAX:
        raise OverflowRiskError(f"{name}: {what} holds values above the int64 maximum")
    return arr.astype(np.int64, copy=False)


def _integer(value: Any, what: str, name: str) -> int:
    """An integer scalar (Python/numpy int, integral float, or size-1 integer array)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)):
        raise QuantizedOpError(f"{name}: {what} must be an integer scalar, got {value!r}")
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise QuantizedOpError(f"{name}: {what} must be an integer scalar, got {value!r}")


def _describe(lo: int, hi: int) -> str:
    bits = bit_width_reference(lo, hi)
    return f"[{lo}, {hi}] ({'int' if lo < 0 else 'uint'}{bits})"


def _range(arr: I64) -> tuple[int, int]:
    return (int(arr.min()), int(arr.max())) if arr.size else (0, 0)


def _check_bound(terms: int, x: tuple[int, int], c: tuple[int, int], what: str, name: str) -> None:
    """OverflowRiskError unless terms·max|x|·max|c| fits int64 (the kernels' criterion)."""
    bound = terms * max(abs(x[0]), abs(x[1])) * max(abs(c[0]), abs(c[1]))
    if bound > _I64_MAX:
        raise OverflowRiskError(
            f"{name}: the int64 accumulator could overflow: {what} over {terms} terms: the "
            f"input {_describe(*x)} and the weights {_describe(*c)} give a worst case of "
            f"about 2^{math.log2(bound):.1f}; use fewer bits for the inputs or the weights"
        )


def _round_python(v: int, lsbs: int) -> int:
    return v if lsbs <= 0 else ((v + (1 << (lsbs - 1))) >> lsbs) << lsbs


def _check_lsbs(lsbs: int, name: str) -> int:
    lsbs = _integer(lsbs, "lsbs", name)
    if lsbs > _MAX_LSBS:
        raise QuantizationError(
            f"{name}: cannot remove {lsbs} bits from an int64 value; give at most {_MAX_LSBS}"
        )
    return lsbs


# --- Gemm / MatMul (SPEC §3.1) ---------------------------------------------------------------


def _gemm_operands(
    q_x: Any, q_w: Any, z_x: Any, z_w: Any, name: str, check: bool
) -> tuple[I64, I64, int, int]:
    a = _int64(q_x, "the input q_x", name)
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


def integer_gemm_reference(
    q_x: Any, q_w: Any, z_x: Any = 0, z_w: Any = 0, name: str = "Gemm"
) -> tuple[I64, I64]:
    """Zero-point-corrected integer matmul (Jacob et al. 2018, Eq. 7; SPEC §3.1).

    Args:
        q_x: integer input, (..., M, K) or (K,).
        q_w: integer weights after transB, (K, N) or (..., K, N).
        z_x: input zero point (integer scalar).
        z_w: weight zero point (integer scalar).
        name: op name used in error messages.

    Returns:
        (acc, sum_w): acc = q_x @ q_w - z_w·Σ_k q_x (int64, the shape of q_x @ q_w) and
        sum_w = z_x·Σ_k q_w with keepdims on axis -2.
    """
    a, b, zx, zw = _gemm_operands(q_x, q_w, z_x, z_w, name, check=True)
    acc = a @ b
    if zw != 0:
        acc = acc - zw * a.sum(axis=-1, keepdims=True)
    return acc, zx * b.sum(axis=-2, keepdims=True)


def _integer_gemm_native(
    q_x: Any, q_w: Any, z_x: Any = 0, z_w: Any = 0, name: str = "Gemm"
) -> tuple[I64, I64]:
    a, b, zx, zw = _gemm_operands(q_x, q_w, z_x, z_w, name, check=False)
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


def integer_gemm_rescale_reference(
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
    """The clear Gemm up to its output quantization (SPEC §3.1, §2.4).

    ``v = ((float64(round(acc)) + offset) - sub)·mul (+ add)`` with ``acc`` the corrected
    matmul of :func:`integer_gemm_reference` and ``round`` the round_bit_pattern of
    ``lsbs`` bits (none for lsbs <= 0): the numpy steps of ``QuantizedGemm.q_impl``.

    Args:
        q_x: integer input, (..., M, K) or (K,).
        q_w: integer weights after transB, (K, N) or (..., K, N).
        z_w: weight zero point (integer scalar).
        lsbs: bits removed by the rounding of the accumulator.
        offset: added first (p·z_x·z_w).
        sub: subtracted next (z_x·Σ_k q_w).
        mul: multiplied next (s_x·s_w).
        add: added last (the float bias), or None.
        name: op name used in error messages.

    Returns:
        The float values (numpy's dtype and shape for these operands).
    """
    acc, _ = integer_gemm_reference(q_x, q_w, 0, z_w, name)
    if _check_lsbs(lsbs, name) > 0:
        acc = round_bit_pattern_reference(acc, lsbs, name)
    return float64_rescale(acc, offset, sub, mul, add)


def float64_rescale(acc: Any, offset: Any, sub: Any, mul: Any, add: Any = None) -> Any:
    """``((float64(acc) + offset) - sub)·mul (+ add)``, one ufunc per step in this order: the
    rescale of a Gemm/Conv accumulator (SPEC §3.1, §3.2) that the fused kernels reproduce.
    ``acc`` may be an array or a concrete tracer."""
    v = acc.astype(np.float64) + offset
    v = v - sub
    v = mul * v
    return v if add is None else v + add


def _along_axis(operand: Any, size: int, ndim: int, axis: int) -> npt.NDArray[np.float64] | None:
    """``operand`` as the float64 vector (size,) that a float64 array of rank ``ndim`` meets
    in a ufunc, or None unless the result stays float64 with that shape and the operand
    varies along ``axis`` only."""
    arr = np.asarray(operand)
    if arr.dtype.kind not in "biuf" or arr.ndim > ndim:
        return None
    if np.result_type(np.float64, arr) != np.float64:
        return None
    shape = (1,) * (ndim - arr.ndim) + arr.shape
    if shape[axis] not in (1, size) or any(d != 1 for i, d in enumerate(shape) if i != axis % ndim):
        return None
    wide = arr.astype(np.float64).reshape(-1)
    return np.ascontiguousarray(np.broadcast_to(wide, (size,)))


def _rescale_vectors(
    offset: Any, sub: Any, mul: Any, add: Any, size: int, ndim: int, axis: int
) -> tuple[float, Any, Any, Any] | None:
    """(offset, sub, mul, add) as the fused kernels take them (a float and float64 vectors
    of length ``size`` along ``axis``), or None when numpy's broadcasting of an operand is
    not that (the caller then runs the reference steps)."""
    first = _along_axis(offset, 1, ndim, axis)
    vectors = [_along_axis(v, size, ndim, axis) for v in (sub, mul)]
    bias = None if add is None else _along_axis(add, size, ndim, axis)
    if first is None or vectors[0] is None or vectors[1] is None:
        return None
    if add is not None and bias is None:
        return None
    return float(first[0]), vectors[0], vectors[1], bias


def _integer_gemm_rescale_native(
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
    a, b, _, zw = _gemm_operands(q_x, q_w, 0, z_w, name, check=False)
    k_lsbs = _check_lsbs(lsbs, name)
    if a.size == 0 or b.size == 0 or b.ndim != 2 or a.ndim < 2:
        return integer_gemm_rescale_reference(a, b, zw, k_lsbs, offset, sub, mul, add, name)
    n = b.shape[-1]
    vectors = _rescale_vectors(offset, sub, mul, add, n, a.ndim, -1)
    if vectors is None:
        return integer_gemm_rescale_reference(a, b, zw, k_lsbs, offset, sub, mul, add, name)
    m, k = a.shape[-2:]
    v = _core.int_matmul_rescale(a.reshape(-1, m, k), b[None], zw, k_lsbs, *vectors, name)
    return v.reshape(*a.shape[:-1], n)


# --- Conv (SPEC §3.2) and window geometry ----------------------------------------------------


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


def _as_4d(x: I64, spatial: int) -> I64:
    return x[:, :, None, :] if spatial == 1 else x


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
) -> tuple[I64, I64, int, int, int, Any, Any, int]:
    x = _int64(q_x, "the input q_x", name)
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
    """Zero-point-corrected integer Conv, 1-D or 2-D, dilation 1 (SPEC §3.2).

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


def _integer_conv_native(
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
    x, w, zx, zw, group, s, p, spatial = _conv_operands(
        q_x, q_w, z_x, z_w, strides, pads, group, name, check=False
    )
    acc = _core.int_conv2d(x, w, zw, group, s, p, zx, name)
    sum_w = _core.int_conv_weight_sums(w, zx, name).reshape(1, w.shape[0], 1, 1)
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
    """The clear Conv up to its output quantization (SPEC §3.2, §2.4).

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


def _integer_conv_rescale_native(
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
    x, w, zx, zw, group, s, p, spatial = _conv_operands(
        q_x, q_w, z_x, z_w, strides, pads, group, name, check=False
    )
    k_lsbs = _check_lsbs(lsbs, name)
    vectors = _rescale_vectors(offset, sub, mul, add, w.shape[0], spatial + 2, 1)
    if x.size == 0 or vectors is None:
        return integer_conv_rescale_reference(
            q_x, q_w, zx, zw, k_lsbs, offset, sub, mul, add,
            strides=strides, pads=pads, group=group, name=name,
        )  # fmt: skip
    v = _core.int_conv2d_rescale(x, w, zw, group, s, p, zx, k_lsbs, *vectors, name)
    if spatial == 1:
        return v.reshape(v.shape[0], v.shape[1], v.shape[3])
    return v


# --- pools (SPEC §3.6) -----------------------------------------------------------------------


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
    if check_sum:  # the native window sum runs the same check itself
        xlo, xhi = _range(x4)
        if any(p):
            xlo, xhi = min(xlo, zx), max(xhi, zx)
        if any(extra):
            xlo, xhi = min(xlo, 0), max(xhi, 0)
        _check_bound(k[0] * k[1], (xlo, xhi), (1, 1), "a window sum", name)
    return x4, k, s, p, extra, zx, spatial == 1


def window_sum_reference(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    ceil_mode: int = 0,
    name: str = "AveragePool",
) -> I64:
    """Integer window sums of AveragePool (SPEC §3.6).

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


def _window_sum_native(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    ceil_mode: int = 0,
    name: str = "AveragePool",
) -> I64:
    x, k, s, p, extra, zx, one_d = _pool_operands(
        q_x, kernel_shape, strides, pads, z_x, ceil_mode, name
    )
    out = _core.int_window_sum(x, k, s, p, extra, zx, name)
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


def _window_max_native(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    name: str = "MaxPool",
) -> I64:
    x, k, s, p, _, zx, one_d = _pool_operands(q_x, kernel_shape, strides, pads, z_x, 0, name)
    out = _core.int_window_max(x, k, s, p, zx, name)
    return out[:, :, 0, :] if one_d else out


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
    return x, k, s, p, zx


def unfold_reference(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    name: str = "Unfold",
) -> I64:
    """Integer Unfold (SPEC §3.6): the windows of q_x padded with z_x, as columns.

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


def _unfold_native(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    name: str = "Unfold",
) -> I64:
    x, k, s, p, zx = _unfold_operands(q_x, kernel_shape, strides, pads, z_x, name)
    c, kk = x.shape[1], k[0] * k[1]
    # A grouped conv with one identity kernel per (channel, tap).
    eye = np.eye(kk, dtype=np.int64).reshape(kk, 1, k[0], k[1])
    ident = np.tile(eye, (c, 1, 1, 1))
    out = _core.int_conv2d(x, ident, 0, c, s, p, zx, name)
    return out.reshape(x.shape[0], c * kk, -1)


# --- round_bit_pattern (SPEC §2.4) -----------------------------------------------------------


def round_bit_pattern_reference(x: Any, lsbs: int, name: str = "round_bit_pattern") -> I64:
    """floor((x + 2^(k-1)) / 2^k)·2^k for k = lsbs > 0 (ties up), a copy for k <= 0.

    Args:
        x: integer array of any shape.
        lsbs: number of least significant bits to remove (at most 62).
        name: op name used in error messages.

    Returns:
        An int64 array of the shape of x.
    """
    arr = _int64(x, "the accumulator", name)
    k = _check_lsbs(lsbs, name)
    if k <= 0:
        return arr.copy()
    half = 1 << (k - 1)
    if arr.size and int(arr.max()) + half > _I64_MAX:
        raise OverflowRiskError(f"{name}: rounding {int(arr.max())} to 2^{k} leaves int64")
    return ((arr + half) >> k) << k


def _round_bit_pattern_native(x: Any, lsbs: int, name: str = "round_bit_pattern") -> I64:
    arr = _int64(x, "the accumulator", name)
    k = _check_lsbs(lsbs, name)
    return _core.int_round_bit_pattern(arr, k, name)


# --- bit widths and the worst-case accumulator ranges (SPEC §7) ------------------------------


def bit_width_reference(lo: int, hi: int) -> int:
    """Bits of the smallest concrete-python integer type holding [lo, hi].

    Signed iff lo < 0. Per end: 0 → 1; v < 0 → ceil(log2|v|) + 1; v > 0 → ceil(log2(v + 1)),
    plus 1 if signed (as ``Integer.that_can_represent``, including its float log2).

    Args:
        lo: the smallest value.
        hi: the largest value.

    Returns:
        The bit width.
    """
    signed = lo < 0

    def bits(v: int) -> int:
        if v == 0:
            return 1
        if v < 0:
            return math.ceil(math.log2(-v)) + 1
        return math.ceil(math.log2(v + 1)) + int(signed)

    return max(bits(int(lo)), bits(int(hi)))


def _bit_width_native(lo: int, hi: int) -> int:
    lo, hi = int(lo), int(hi)
    if all(-(2**127) <= v < 2**127 for v in (lo, hi)):
        return _core.int_bit_width(lo, hi)[0]
    return bit_width_reference(lo, hi)


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


def _box(x_lo: Any, x_hi: Any, name: str) -> tuple[int, int]:
    lo = _integer(x_lo, "x_lo", name)
    hi = _integer(x_hi, "x_hi", name)
    if lo > hi:
        raise QuantizationError(f"{name}: the input range [{lo}, {hi}] is empty; give x_lo <= x_hi")
    return lo, hi


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


def _gemm_bounds_native(
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
    return _as_4d(w, spatial), zw, xl, xh, in_hw, s, p, extra, zx, k


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


def _conv_bounds_native(
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
    """Exact worst-case range of the AveragePool window sums (SPEC §3.6), then rounded.

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


def _window_sum_bounds_native(
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
    lo, hi = _conv_bounds_native(
        ones, 0, x_lo, x_hi, input_shape, z_x, strides, pads, lsbs, ceil_mode, name
    )
    return int(lo[0]), int(hi[0])


# Dispatch: the native kernels.
integer_gemm = _integer_gemm_native
integer_gemm_rescale = _integer_gemm_rescale_native
integer_conv = _integer_conv_native
integer_conv_rescale = _integer_conv_rescale_native
window_sum = _window_sum_native
window_max = _window_max_native
unfold = _unfold_native
round_bit_pattern = _round_bit_pattern_native
bit_width = _bit_width_native
gemm_bounds = _gemm_bounds_native
conv_bounds = _conv_bounds_native
window_sum_bounds = _window_sum_bounds_native
