"""Brevitas / QONNX fake quantization (docs/contract.md §3.8).

Registered as ``onnx.brevitas.Quant`` and, for models exported by qonnx, as
``qonnx.custom_op.general.Quant``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant.errors import QuantizationError
from fhequant.onnx.registry import register

_ROUNDING: dict[str, Any] = {
    "ROUND": np.rint,
    "FLOOR": np.floor,
    "CEIL": np.ceil,
    "ROUND_TO_ZERO": np.trunc,
}


def quant_bounds(bit_width: int, signed: int, narrow: int) -> tuple[int, int]:
    """The integer range of a Quant node (docs/contract.md §3.8).

    Args:
        bit_width: number of bits b.
        signed: 1 for [-2^(b-1) (+1 if narrow), 2^(b-1) - 1], 0 for [0, 2^b - 1].
        narrow: 1 drops the most negative value (signed only).

    Returns:
        (min_int, max_int) as Python ints.
    """
    if signed:
        return -(2 ** (bit_width - 1)) + (1 if narrow else 0), 2 ** (bit_width - 1) - 1
    return 0, 2**bit_width - 1


def integer_bit_width(bit_width: np.ndarray | float) -> int:
    """The bit width as an int; a non-integer or non-positive value raises QuantizationError."""
    b = float(np.asarray(bit_width).reshape(-1)[0]) if np.size(bit_width) else float("nan")
    if not (b >= 1 and b == int(b)) or np.size(bit_width) != 1:
        raise QuantizationError(
            f"Quant bit_width must be one positive integer, got {np.asarray(bit_width).tolist()}"
        )
    return int(b)


@register(
    "onnx.brevitas.Quant",
    "x, scale, zero_point, bit_width",
    {"rounding_mode": "ROUND", "signed": 1, "narrow": 0},
    raw=("scale", "zero_point", "bit_width"),
    aliases=("qonnx.custom_op.general.Quant",),
)
def brevitas_quant(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    bit_width: np.ndarray,
    *,
    rounding_mode: str = "ROUND",
    signed: int = 1,
    narrow: int = 0,
) -> np.ndarray:
    """Fake quantization: y = x/scale + zp, clip, THEN round, then (y - zp)·scale.

    Args:
        x: the float tensor.
        scale: the scale (scalar or broadcastable).
        zero_point: the zero point (float-typed integer values).
        bit_width: the number of bits (one integer value).
        rounding_mode: "ROUND" (half to even); FLOOR, CEIL and ROUND_TO_ZERO are accepted here,
            the quantized layer only accepts ROUND.
        signed: 1 for a signed range.
        narrow: 1 for a narrow signed range.

    Returns:
        The fake-quantized tensor.
    """
    rnd = _ROUNDING.get(str(rounding_mode).upper())
    if rnd is None:
        raise QuantizationError(
            f"Quant rounding_mode {rounding_mode!r} is not one of {sorted(_ROUNDING)}"
        )
    lo, hi = quant_bounds(integer_bit_width(bit_width), int(signed), int(narrow))
    y = x / scale + zero_point
    y = rnd(np.clip(y, lo, hi))
    return (y - zero_point) * scale
