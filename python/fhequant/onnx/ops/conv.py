"""Convolutions: Conv, ConvTranspose and Unfold (torch.nn.Unfold).

Conv and ConvTranspose compute in float64 (docs/contract.md §0: calibration uses these float64
results, ``quant_fn``); the graph forms (``fn``) return onnxruntime's dtype, that of the
inputs (float32 for float32 data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fhequant.errors import ShapeError
from fhequant.kernels.limits import check_sample_elements, check_window_geometry
from fhequant.onnx.ops._spatial import pad_spatial, per_axis, resolve_pads, windows
from fhequant.onnx.registry import REQUIRED, register

_CONV_ATTRS = {
    "auto_pad": "NOTSET",
    "dilations": None,
    "group": 1,
    "kernel_shape": None,
    "pads": None,
    "strides": None,
}


def _padded_float64(x: np.ndarray, begins: Sequence[int], ends: Sequence[int]) -> np.ndarray:
    """docs/contract.md §0: pad into a float32 buffer (rounding padded data to float32), then
    float64."""
    return pad_spatial(x, begins, ends, 0, np.float32).astype(np.float64, copy=False)


def _graph_dtype(*xs: np.ndarray | None) -> np.dtype:
    """onnxruntime's output dtype of a float op: the common dtype of its float inputs."""
    return np.result_type(*[np.asarray(x).dtype for x in xs if x is not None])


def conv_quant(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """N-d convolution in float64 (any number of spatial axes, groups, dilations).

    Returns:
        float64 array (N, O, *out).
    """
    del kernel_shape
    nsp = np.ndim(x) - 2
    if nsp < 1 or np.ndim(w) != nsp + 2:
        raise ShapeError(f"Conv input rank {np.ndim(x)} and weight rank {np.ndim(w)} do not fit")
    k = w.shape[2:]
    s = per_axis(strides, nsp, 1, "strides")
    d = per_axis(dilations, nsp, 1, "dilations")
    begins, ends = resolve_pads(auto_pad, pads, x.shape[2:], k, s, d)
    check_window_geometry(x.shape[1], x.shape[2:], k, s, d, begins, ends, "Conv")
    win = windows(_padded_float64(x, begins, ends), k, s, d)
    n_out, c_in = w.shape[0], x.shape[1]
    group = int(group)
    if c_in % group or n_out % group or w.shape[1] * group != c_in:
        raise ShapeError(
            f"Conv with group={group}: {c_in} input channels and weight {w.shape} do not fit"
        )
    cg, og = c_in // group, n_out // group
    w64 = np.asarray(w, dtype=np.float64)
    win_axes = [1, *range(2 + nsp, 2 + 2 * nsp)]
    w_axes = [1, *range(2, 2 + nsp)]
    parts = [
        np.tensordot(win[:, g * cg : (g + 1) * cg], w64[g * og : (g + 1) * og], (win_axes, w_axes))
        for g in range(group)
    ]
    y = parts[0] if group == 1 else np.concatenate(parts, axis=-1)
    y = np.moveaxis(y, -1, 1)
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64).reshape((1, -1) + (1,) * nsp)
    return np.ascontiguousarray(y)


@register("Conv", "X, W, B?", _CONV_ATTRS, quant_fn=conv_quant)
def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **attrs: Any) -> np.ndarray:
    """ONNX Conv: ``conv_quant`` (float64) in the inputs' dtype, as onnxruntime returns it."""
    return conv_quant(x, w, b, **attrs).astype(_graph_dtype(x, w, b), copy=False)


def conv_transpose_quant(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """N-d transposed convolution in float64 (scatter-add of each kernel tap).

    Returns:
        float64 array (N, O, *out).
    """
    del kernel_shape
    nsp = np.ndim(x) - 2
    k = w.shape[2:]
    s = per_axis(strides, nsp, 1, "strides")
    d = per_axis(dilations, nsp, 1, "dilations")
    op = per_axis(output_padding, nsp, 0, "output_padding")
    if any(o >= max(st, dd) for o, st, dd in zip(op, s, d, strict=False)):
        raise ShapeError(
            f"ConvTranspose output_padding {list(op)} must be smaller than the strides "
            f"{list(s)} or the dilations {list(d)}"
        )
    in_sp = x.shape[2:]
    full = [
        (i - 1) * st + (kk - 1) * dd + 1 + o
        for i, st, kk, dd, o in zip(in_sp, s, k, d, op, strict=False)
    ]
    target: list[int] | None = None
    if output_shape is not None and len(output_shape) > 0:
        # onnxruntime: the pads crop what exceeds output_shape (more at the tail for
        # SAME_UPPER, at the head otherwise); a larger output_shape extends the tail
        target = [int(t) for t in list(output_shape)[-nsp:]]
        if len(target) != nsp or any(t < 1 for t in target):
            raise ShapeError(
                f"ConvTranspose output_shape {list(output_shape)} does not give {nsp} spatial "
                "sizes >= 1"
            )
        too_big = [t for t, f, st in zip(target, full, s, strict=False) if t - f >= st]
        if too_big:  # onnxruntime: inconsistent with the input size
            raise ShapeError(
                f"ConvTranspose output_shape {target} is inconsistent with the input "
                f"{list(in_sp)}: with strides {list(s)} the output is at most "
                f"{[f + st - 1 for f, st in zip(full, s, strict=False)]}"
            )
        totals = [max(0, f - t) for f, t in zip(full, target, strict=False)]
        if auto_pad == "SAME_UPPER":
            begins = [t // 2 for t in totals]
        else:
            begins = [t - t // 2 for t in totals]
        ends = [t - bb for t, bb in zip(totals, begins, strict=False)]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [f - i * st for f, i, st in zip(full, in_sp, s, strict=False)]
        begins = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
        ends = [t - bb for t, bb in zip(totals, begins, strict=False)]
    else:
        p = per_axis(pads, 2 * nsp, 0, "pads") if auto_pad != "VALID" else (0,) * (2 * nsp)
        begins, ends = list(p[:nsp]), list(p[nsp:])
    if target is None and any(f - bb - e < 1 for f, bb, e in zip(full, begins, ends, strict=False)):
        raise ShapeError(
            f"ConvTranspose pads {list(begins) + list(ends)} leave no output of the full size "
            f"{full}"
        )
    group = int(group)
    c_in, og = x.shape[1], w.shape[1]
    check_sample_elements(og * group * math.prod(full), "the output" + f" {full}", "ConvTranspose")
    if target is not None:
        check_sample_elements(
            og * group * math.prod(target), f"the output {target}", "ConvTranspose"
        )
    if c_in % group or w.shape[0] != c_in:
        raise ShapeError(f"ConvTranspose group={group}: input {x.shape} and weight {w.shape}")
    cg = c_in // group
    x64, w64 = np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64)
    n = x.shape[0]
    out = np.zeros((n, og * group, *full), dtype=np.float64)
    for g in range(group):
        # taps: (N, *in, Og, *k)
        taps = np.tensordot(x64[:, g * cg : (g + 1) * cg], w64[g * cg : (g + 1) * cg], ([1], [0]))
        taps = np.moveaxis(taps, 1 + nsp, 1)  # (N, Og, *in, *k)
        for tap in np.ndindex(*k):
            dst = (
                slice(None),
                slice(g * og, (g + 1) * og),
                *tuple(
                    slice(t * dd, t * dd + (i - 1) * st + 1, st)
                    for t, dd, i, st in zip(tap, d, in_sp, s, strict=False)
                ),
            )
            tap_index = (Ellipsis, *tap)
            out[dst] += taps[tap_index]  # type: ignore[index]
    crop = (
        slice(None),
        slice(None),
        *tuple(slice(bb, f - e) for bb, f, e in zip(begins, full, ends, strict=False)),
    )
    y = out[crop]
    if target is not None and list(y.shape[2:]) != target:
        grown = np.zeros((*y.shape[:2], *target), dtype=np.float64)
        inner = (slice(None), slice(None), *tuple(slice(0, n) for n in y.shape[2:]))
        grown[inner] = y
        y = grown
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64).reshape((1, -1) + (1,) * nsp)
    return np.ascontiguousarray(y)


@register(
    "ConvTranspose",
    "X, W, B?",
    {**_CONV_ATTRS, "output_padding": None, "output_shape": None},
    quant_fn=conv_transpose_quant,
)
def conv_transpose(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **attrs: Any
) -> np.ndarray:
    """ONNX ConvTranspose: ``conv_transpose_quant`` (float64) in the inputs' dtype."""
    return conv_transpose_quant(x, w, b, **attrs).astype(_graph_dtype(x, w, b), copy=False)


@register(
    "Unfold",
    "X",
    {"kernel_shape": REQUIRED, "pads": None, "strides": None, "dilations": None},
)
def unfold(
    x: np.ndarray,
    *,
    kernel_shape: Sequence[int],
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
) -> np.ndarray:
    """torch.nn.Unfold: (N, C, H, W) → (N, C·kh·kw, L), channel-major, in float64."""
    nsp = np.ndim(x) - 2
    k = per_axis(kernel_shape, nsp, 1, "kernel_shape")
    s = per_axis(strides, nsp, 1, "strides")
    d = per_axis(dilations, nsp, 1, "dilations")
    p = per_axis(pads, 2 * nsp, 0, "pads")
    check_window_geometry(x.shape[1], x.shape[2:], k, s, d, p[:nsp], p[nsp:], "Unfold")
    win = windows(_padded_float64(x, p[:nsp], p[nsp:]), k, s, d)  # (N, C, *out, *k)
    perm = (0, 1, *range(2 + nsp, 2 + 2 * nsp), *range(2, 2 + nsp))
    cols = win.transpose(perm)
    n, c = x.shape[:2]
    return cols.reshape(n, c * int(np.prod(k)), -1)
