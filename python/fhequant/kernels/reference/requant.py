"""The fused Gemm/Conv rescale followed by the output quantizer: the numpy twins."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fhequant.kernels.reference.conv import integer_conv_rescale_reference
from fhequant.kernels.reference.gemm import integer_gemm_rescale_reference
from fhequant.kernels.reference.quant import quantize_reference

#: The narrow outputs, smallest first (those of ``kernels.quant.quantize_narrow``).
NARROW_INTS = (np.dtype(np.int8), np.dtype(np.int16))


def narrow_dtype(lo: int, hi: int) -> np.dtype[Any] | None:
    """The smallest of int8/int16 holding ``[lo, hi]`` with room below ``lo`` (the dtype
    ``quantize_narrow`` picks), or None."""
    return next((d for d in NARROW_INTS if np.iinfo(d).min < lo and hi <= np.iinfo(d).max), None)


def requantize_reference(
    v: Any, quant: Sequence[Any]
) -> tuple[np.ndarray[Any, Any], int, int] | None:
    """``quantize_reference(v, scale, zero_point, lo, hi)`` narrowed to :func:`narrow_dtype`,
    with its min and max; None when no narrow dtype holds the bounds or ``v`` has a NaN."""
    scale, zero_point, lo, hi = quant
    dtype = narrow_dtype(int(lo), int(hi))
    v = np.asarray(v)
    if dtype is None or v.size == 0 or np.isnan(v).any():
        return None
    q = quantize_reference(v, scale, zero_point, lo, hi, np.int64)
    return q.astype(dtype), int(q.min()), int(q.max())


def integer_gemm_rescale_quant_reference(
    q_x: Any,
    q_w: Any,
    z_w: Any,
    lsbs: int,
    offset: Any,
    sub: Any,
    mul: Any,
    add: Any,
    quant: Sequence[Any],
    name: str = "Gemm",
) -> tuple[np.ndarray[Any, Any], int, int] | None:
    """``integer_gemm_rescale_reference`` quantized by the output quantizer.

    Args:
        q_x, q_w, z_w, lsbs, offset, sub, mul, add, name: as for
            :func:`~fhequant.kernels.reference.gemm.integer_gemm_rescale_reference`.
        quant: the output quantizer's (scale, zero_point, lo, hi), its clip bounds included.

    Returns:
        (integers in int8/int16, min, max), or None (see :func:`requantize_reference`).
    """
    v = integer_gemm_rescale_reference(q_x, q_w, z_w, lsbs, offset, sub, mul, add, name)
    return requantize_reference(v, quant)


def integer_conv_rescale_quant_reference(
    q_x: Any,
    q_w: Any,
    z_x: Any,
    z_w: Any,
    lsbs: int,
    offset: Any,
    sub: Any,
    mul: Any,
    add: Any,
    quant: Sequence[Any],
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    group: int = 1,
    name: str = "Conv",
) -> tuple[np.ndarray[Any, Any], int, int] | None:
    """``integer_conv_rescale_reference`` quantized by the output quantizer (``quant`` as
    for :func:`integer_gemm_rescale_quant_reference`)."""
    v = integer_conv_rescale_reference(
        q_x, q_w, z_x, z_w, lsbs, offset, sub, mul, add,
        strides=strides, pads=pads, group=group, name=name,
    )  # fmt: skip
    return requantize_reference(v, quant)
