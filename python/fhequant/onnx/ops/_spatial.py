"""Geometry shared by Conv, ConvTranspose, Unfold and the pools: pads, sliding windows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fhequant.errors import OnnxImportError


def per_axis(values: Sequence[int] | None, n: int, default: int, what: str) -> tuple[int, ...]:
    """An attribute with one value per spatial axis (``default`` when absent).

    Pads must be >= 0, every other geometry attribute >= 1.
    """
    if values is None or len(values) == 0:
        return (default,) * n
    if len(values) != n:
        raise OnnxImportError(f"{what} has {len(values)} values for {n} spatial axes")
    out = tuple(int(v) for v in values)
    low = 0 if default == 0 else 1
    if any(v < low for v in out):
        raise OnnxImportError(f"{what} {list(out)} must be >= {low}")
    return out


def resolve_pads(
    auto_pad: str,
    pads: Sequence[int] | None,
    in_shape: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (begins, ends) pads of each spatial axis, from ``pads`` or ``auto_pad``."""
    n = len(in_shape)
    if auto_pad in ("", "NOTSET"):
        p = per_axis(pads, 2 * n, 0, "pads")
        return p[:n], p[n:]
    if auto_pad == "VALID":
        return (0,) * n, (0,) * n
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise OnnxImportError(
            f"auto_pad {auto_pad!r} is not NOTSET, VALID, SAME_UPPER or SAME_LOWER"
        )
    begins, ends = [], []
    for size, k, s, d in zip(in_shape, kernel, strides, dilations, strict=False):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else big)
        ends.append(big if auto_pad == "SAME_UPPER" else small)
    return tuple(begins), tuple(ends)


def pad_spatial(
    x: np.ndarray, begins: Sequence[int], ends: Sequence[int], value: Any = 0, dtype: Any = None
) -> np.ndarray:
    """x padded on its spatial axes (2..) into a new buffer of ``dtype`` (default x.dtype).

    Returns x itself when every pad is zero.
    """
    if not any(begins) and not any(ends):
        return x
    shape = x.shape[:2] + tuple(
        s + b + e for s, b, e in zip(x.shape[2:], begins, ends, strict=False)
    )
    buf = np.full(shape, value, dtype=dtype if dtype is not None else x.dtype)
    inner = (
        slice(None),
        slice(None),
        *tuple(slice(b, b + s) for b, s in zip(begins, x.shape[2:], strict=False)),
    )
    buf[inner] = x
    return buf


def windows(
    x: np.ndarray, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> np.ndarray:
    """A read-only view (N, C, *out, *kernel) of the sliding windows of a padded x."""
    n = len(kernel)
    eff = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=False))
    if any(e > s for e, s in zip(eff, x.shape[2:], strict=False)):
        raise OnnxImportError(
            f"kernel {tuple(kernel)} (dilated {eff}) is larger than the padded input "
            f"{tuple(x.shape[2:])}"
        )
    view = np.lib.stride_tricks.sliding_window_view(x, eff, axis=tuple(range(2, 2 + n)))  # type: ignore[call-overload]
    index = (slice(None), slice(None))
    index += tuple(slice(None, None, s) for s in strides)
    index += tuple(slice(None, None, d) for d in dilations)
    return view[index]


def pool_output(
    size: int, k: int, s: int, d: int, begin: int, end: int, ceil_mode: int
) -> tuple[int, int]:
    """(output size, extra end padding) of one pooled axis, onnxruntime's ceil_mode rule."""
    eff = (k - 1) * d + 1
    span = size + begin + end - eff
    if not ceil_mode:
        return span // s + 1, 0
    out = -(-span // s) + 1
    if (out - 1) * s >= size + begin:  # the last window would start in the end padding
        out -= 1
    extra = max(0, (out - 1) * s + eff - (size + begin + end))
    return out, extra
