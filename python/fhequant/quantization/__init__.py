"""Quantizers: options, statistics, parameters, the uniform quantizer and QuantizedArray.

These classes are bit-identical to the reference (SPEC.md §1): same integers, float bits,
dtypes, Python-vs-numpy scalar types and JSON text.
"""

from __future__ import annotations

from typing import Any

from fhequant.quantization.kwargs import fill_from_kwargs
from fhequant.quantization.options import STABILITY_CONST, QuantizationOptions
from fhequant.quantization.params import UniformQuantizationParameters
from fhequant.quantization.quantized_array import QuantizedArray
from fhequant.quantization.quantizer import UniformQuantizer
from fhequant.quantization.stats import MinMaxQuantizationStats
from fhequant.quantization.torch_quantizer import TorchUniformQuantizer

__all__ = [
    "STABILITY_CONST",
    "MinMaxQuantizationStats",
    "QuantizationOptions",
    "QuantizedArray",
    "TorchUniformQuantizer",
    "UniformQuantizationParameters",
    "UniformQuantizer",
    "fill_from_kwargs",
]


def __getattr__(name: str) -> Any:
    """The quantized op classes and their registry, re-exported lazily from
    ``fhequant.quantized`` (as the reference's ``concrete.ml.quantization`` does), which
    itself imports this package.
    """
    import fhequant.quantized as quantized

    if name in quantized.__all__:
        return getattr(quantized, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
