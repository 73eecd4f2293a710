"""Pools: AveragePool, MaxPool, GlobalAveragePool, GlobalMaxPool.

AveragePool computes in float64 (docs/contract.md §0, ``quant_fn``, what calibration uses); its
graph form (``fn``) returns the input's dtype, as onnxruntime does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fhequant.errors import OnnxImportError
from fhequant.kernels.limits import check_window_geometry
from fhequant.onnx.ops._spatial import pad_spatial, per_axis, pool_output, resolve_pads, windows
from fhequant.onnx.registry import REQUIRED, register

_POOL_ATTRS = {
    "auto_pad": "NOTSET",
    "ceil_mode": 0,
    "dilations": None,
    "kernel_shape": REQUIRED,
    "pads": None,
    "strides": None,
}


def _geometry(
    x: np.ndarray,
    auto_pad: str,
    ceil_mode: int,
    dilations: Sequence[int] | None,
    kernel_shape: Sequence[int],
    pads: Sequence[int] | None,
    strides: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], list[int], list[int]]:
    """(kernel, strides, dilations, begins, ends incl. the ceil_mode extension)."""
    nsp = np.ndim(x) - 2
    k = per_axis(kernel_shape, nsp, 1, "kernel_shape")
    s = per_axis(strides, nsp, 1, "strides")
    d = per_axis(dilations, nsp, 1, "dilations")
    begins, ends = resolve_pads(auto_pad, pads, x.shape[2:], k, s, d)
    ext = [
        pool_output(size, kk, st, dd, b, e, ceil_mode)[1]
        for size, kk, st, dd, b, e in zip(x.shape[2:], k, s, d, begins, ends, strict=False)
    ]
    ends_ext = [e + x_ for e, x_ in zip(ends, ext, strict=False)]
    check_window_geometry(x.shape[1], x.shape[2:], k, s, d, begins, ends_ext, "pool")
    return k, s, d, list(begins), ends_ext


def _row_major_window_sum(
    xp: np.ndarray, k: Sequence[int], s: Sequence[int], d: Sequence[int]
) -> np.ndarray:
    """Window sums accumulated tap by tap in row-major order: ((a + b) + c) + d for 2x2.

    This is the order of torch's float64 avg_pool2d, which the reference calibrates with; a
    different order changes the float64 sums by an ulp (and the calibrated scale with them).
    """
    sizes = zip(xp.shape[2:], k, d, s, strict=True)
    out = [(n - ((kk - 1) * dd + 1)) // st + 1 for n, kk, dd, st in sizes]
    total: np.ndarray | None = None
    for tap in np.ndindex(*k):
        spatial = [
            slice(t * dd, t * dd + (o - 1) * st + 1, st)
            for t, dd, o, st in zip(tap, d, out, s, strict=True)
        ]
        index = (slice(None), slice(None), *spatial)
        if total is None:
            total = np.array(xp[index], dtype=np.float64)
        else:
            total += xp[index]
    if total is None:  # unreachable: per_axis gives kernel sizes >= 1
        raise OnnxImportError("AveragePool kernel_shape is empty")
    return total


def average_pool_quant(
    x: np.ndarray,
    *,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    count_include_pad: int = 0,
    dilations: Sequence[int] | None = None,
    kernel_shape: Sequence[int],
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """Average pool in float64: window sums divided by the number of counted cells.

    Counted cells: the input cells, plus the explicit pads when count_include_pad = 1; the
    ceil_mode extension is never counted. Padding uses a float32 buffer (docs/contract.md §0).
    """
    k, s, d, begins, ends = _geometry(
        x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides
    )
    nsp = len(k)
    xp = pad_spatial(x, begins, ends, 0, np.float32).astype(np.float64, copy=False)
    red = tuple(range(-nsp, 0))
    total = _row_major_window_sum(xp, k, s, d)
    mask = np.zeros((1, 1, *xp.shape[2:]), dtype=np.float64)
    _, e_pads = resolve_pads(auto_pad, pads, x.shape[2:], k, s, d)
    if count_include_pad:
        region = tuple(
            slice(0, b + n + e) for b, n, e in zip(begins, x.shape[2:], e_pads, strict=False)
        )
    else:
        region = tuple(slice(b, b + n) for b, n in zip(begins, x.shape[2:], strict=False))
    mask_index = (slice(None), slice(None), *region)
    mask[mask_index] = 1.0
    counts = windows(mask, k, s, d).sum(axis=red)
    return total / counts


@register("AveragePool", "X", {**_POOL_ATTRS, "count_include_pad": 0}, quant_fn=average_pool_quant)
def average_pool(x: np.ndarray, **attrs: Any) -> np.ndarray:
    """ONNX AveragePool: ``average_pool_quant`` (float64) in the input's dtype."""
    return average_pool_quant(x, **attrs).astype(np.asarray(x).dtype, copy=False)


@register("MaxPool", "X", {**_POOL_ATTRS, "storage_order": 0})
def max_pool(
    x: np.ndarray,
    *,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    dilations: Sequence[int] | None = None,
    kernel_shape: Sequence[int],
    pads: Sequence[int] | None = None,
    storage_order: int = 0,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """Max pool (dtype kept); pads and the ceil_mode extension never win."""
    del storage_order
    k, s, d, begins, ends = _geometry(
        x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides
    )
    x = np.asarray(x)
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    xp = pad_spatial(x, begins, ends, low)
    return windows(xp, k, s, d).max(axis=tuple(range(-len(k), 0)))


@register("GlobalAveragePool", "X")
def global_average_pool(x: np.ndarray) -> np.ndarray:
    """Mean over the spatial axes, kept as size-1 axes."""
    return np.mean(x, axis=tuple(range(2, np.ndim(x))), keepdims=True)


@register("GlobalMaxPool", "X")
def global_max_pool(x: np.ndarray) -> np.ndarray:
    """Max over the spatial axes, kept as size-1 axes."""
    return np.max(x, axis=tuple(range(2, np.ndim(x))), keepdims=True)
