"""Split-independent float implementations of ONNX Gemm, MatMul and Conv.

These are the ``split_independent_impl`` capability of QuantizedGemm, QuantizedMatMul and
QuantizedConv: the calibration walk evaluates those ops through them instead of their
BLAS-based float implementations, so that every output row is computed the same way whatever
rows are calibrated with it (streamed == whole-set, docs/contract.md §4.8). Gemm and MatMul
use the sequential matmul of :mod:`fhequant.kernels.float_matmul`; Conv uses the native
sequential conv, or the sequential matmul of its im2col matrix (the same numbers).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fhequant import _core
from fhequant.kernels.float_matmul import sequential_matmul
from fhequant.kernels.limits import MAX_SAMPLE_ELEMENTS, check_window_geometry
from fhequant.onnx.ops._spatial import per_axis, resolve_pads, windows
from fhequant.onnx.ops.conv import _padded_float64

__all__ = ["conv_float", "gemm_float", "matmul_float"]


def gemm_float(
    a: Any,
    b: Any,
    c: Any = None,
    *,
    alpha: Any = 1,
    beta: Any = 1,
    transA: Any = 0,
    transB: Any = 0,
    **_: Any,
) -> Any:
    """ONNX Gemm (docs/contract.md §5.3) with the split-independent float32 matmul."""
    if transA:
        a = np.swapaxes(a, -1, -2)
    if transB:
        b = np.swapaxes(b, -1, -2)
    y = sequential_matmul(a, b)
    if alpha != 1:
        y = alpha * y
    if c is not None and beta != 0:
        c = c if beta == 1 else beta * c
        if _adds_in_place(y, c):
            return np.add(y, c, out=y)  # the same loop as y + c, without a new array
        y = y + c
    return y


def _adds_in_place(y: Any, c: Any) -> bool:
    """Whether ``y + c`` may be written into the fresh array ``y``: an array ``c`` whose
    dtype and shape do not change y's (no value-based casting of 0-d operands)."""
    if not (
        type(y) is np.ndarray
        and y.flags.owndata
        and y.flags.writeable
        and isinstance(c, np.ndarray)
        and c.ndim >= 1
        and not np.may_share_memory(y, c)
        and np.result_type(y.dtype, c.dtype) == y.dtype
    ):
        return False
    try:
        return np.broadcast_shapes(y.shape, c.shape) == y.shape
    except ValueError:  # y + c reports it
        return False


def matmul_float(a: Any, b: Any, **_: Any) -> Any:
    """ONNX MatMul with the split-independent matmul."""
    return sequential_matmul(a, b)


def conv_float(
    x: Any,
    w: Any,
    b: Any = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Any = None,
    group: Any = 1,
    kernel_shape: Any = None,
    pads: Any = None,
    strides: Any = None,
    **_: Any,
) -> Any:
    """ONNX Conv in float64 (docs/contract.md §5.3), each output a sequential sum over (c, k...)
    order.

    The windows are padded exactly as the registry's Conv does (float32 padding buffer, then
    float64); the products are summed by the split-independent kernels instead of BLAS: the
    native conv for 1-D and 2-D float32/float64 inputs, the sequential matmul of the im2col
    matrix otherwise (the same numbers).
    """
    del kernel_shape
    x = np.asarray(x)
    w = np.asarray(w)
    nsp = x.ndim - 2
    k = w.shape[2:]
    s = per_axis(strides, nsp, 1, "strides")
    d = per_axis(dilations, nsp, 1, "dilations")
    begins, ends = resolve_pads(auto_pad, pads, x.shape[2:], k, s, d)
    if x.ndim >= 3:
        check_window_geometry(x.shape[1], x.shape[2:], k, s, d, begins, ends, "Conv")
    if _native_conv_fits(x, w, d, begins, ends, int(group)):
        y = _native_conv(x, w, s, d, begins, ends, int(group))
    else:
        y = _im2col_conv(x, w, s, d, begins, ends, int(group))
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64).reshape((1, -1) + (1,) * nsp)
    return np.ascontiguousarray(y)


_NATIVE_CONV_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _native_conv_fits(
    x: np.ndarray,
    w: np.ndarray,
    d: tuple[int, ...],
    begins: tuple[int, ...],
    ends: tuple[int, ...],
    group: int,
) -> bool:
    """A 1-D/2-D float conv of valid geometry (anything else takes the numpy path, which
    reports the error the registry's Conv would)."""
    nsp = x.ndim - 2
    if nsp not in (1, 2) or w.ndim != x.ndim:
        return False
    if x.dtype not in _NATIVE_CONV_DTYPES or w.dtype not in _NATIVE_CONV_DTYPES:
        return False
    if group < 1 or w.shape[0] % group or w.shape[1] * group != x.shape[1]:
        return False
    for size, k, dd, lo, hi in zip(x.shape[2:], w.shape[2:], d, begins, ends, strict=True):
        if k < 1 or (k - 1) * dd + 1 > size + lo + hi:
            return False
    padded = math.prod(n + lo + hi for n, lo, hi in zip(x.shape[2:], begins, ends, strict=True))
    # over the size limit: the numpy path raises the ShapeError (fhequant.kernels.limits)
    return int(x.shape[1]) * padded <= MAX_SAMPLE_ELEMENTS


def _native_conv(
    x: np.ndarray,
    w: np.ndarray,
    s: tuple[int, ...],
    d: tuple[int, ...],
    begins: tuple[int, ...],
    ends: tuple[int, ...],
    group: int,
) -> np.ndarray:
    """1-D or 2-D float64 conv without bias by the native kernel (1-D as height 1)."""
    one_d = x.ndim == 3
    x64 = np.ascontiguousarray(x, dtype=np.float64)
    w64 = np.ascontiguousarray(w, dtype=np.float64)
    if one_d:
        x64 = x64[:, :, None, :]
        w64 = w64[:, :, None, :]
        s, d, begins, ends = (1, *s), (1, *d), (0, *begins), (0, *ends)
    y = _core.conv2d_f64_sequential(
        x64,
        w64,
        (int(s[0]), int(s[1])),
        (int(d[0]), int(d[1])),
        (int(begins[0]), int(begins[1])),
        (int(ends[0]), int(ends[1])),
        group,
        "Conv",
    )
    return y[:, :, 0, :] if one_d else y


def _im2col_conv(
    x: np.ndarray,
    w: np.ndarray,
    s: tuple[int, ...],
    d: tuple[int, ...],
    begins: tuple[int, ...],
    ends: tuple[int, ...],
    group: int,
) -> np.ndarray:
    """The conv without bias as the sequential matmul of its im2col matrix."""
    nsp = x.ndim - 2
    k = w.shape[2:]
    win = windows(_padded_float64(x, begins, ends), k, s, d)  # (N, C, *out, *k)
    n, out_sp = win.shape[0], win.shape[2 : 2 + nsp]
    group = int(group)
    cg, og = x.shape[1] // group, w.shape[0] // group
    w64 = np.asarray(w, dtype=np.float64)
    order = (0, *range(2, 2 + nsp), 1, *range(2 + nsp, 2 + 2 * nsp))
    parts = []
    for g in range(group):
        taps = cg * int(np.prod(w.shape[2:]))  # explicit: -1 is ambiguous for empty data
        cols = np.transpose(win[:, g * cg : (g + 1) * cg], order).reshape(
            n * int(np.prod(out_sp)), taps
        )
        kernel = w64[g * og : (g + 1) * og].reshape(og, taps).T
        parts.append(sequential_matmul(cols, kernel).reshape(n, *out_sp, og))
    y = parts[0] if group == 1 else np.concatenate(parts, axis=-1)
    return np.moveaxis(y, -1, 1)
