"""Shared helpers of the quantized-op tests: hand-built QuantizedArrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant.quantization import (
    QuantizationOptions,
    QuantizedArray,
    UniformQuantizationParameters,
)


def qa_int(
    q: Any, scale: float, zp: int, n_bits: int = 8, signed: bool = False, offset: int = 0
) -> QuantizedArray:
    """A QuantizedArray holding the integers q with the given scale and zero point."""
    opts = QuantizationOptions(n_bits, is_signed=signed)
    params = UniformQuantizationParameters(scale=np.float64(scale), zero_point=zp, offset=offset)
    return QuantizedArray(
        n_bits, np.asarray(q, dtype=np.int64), value_is_float=False, options=opts, params=params
    )


def qa_float(
    values: Any, n_bits: int, signed: bool = False, symmetric: bool = False
) -> QuantizedArray:
    """A QuantizedArray quantizing float values with fresh min/max params."""
    opts = QuantizationOptions(n_bits, is_signed=signed, is_symmetric=symmetric)
    return QuantizedArray(n_bits, np.asarray(values), options=opts)
