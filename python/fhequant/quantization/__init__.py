"""Quantizers: options, statistics, parameters, the uniform quantizer and QuantizedArray.

These classes are bit-identical to the reference (docs/contract.md §1): same integers, float bits,
dtypes, Python-vs-numpy scalar types and JSON text.

This layer sits below ``fhequant.quantized`` and never imports it; that package, once
imported (``import fhequant`` does), also publishes its ops and modules here, as the
reference's ``concrete.ml.quantization`` exposes them.
"""

from __future__ import annotations

from fhequant.quantization.histogram_stats import EntropyStatistic, MSEStatistic
from fhequant.quantization.kwargs import fill_from_kwargs
from fhequant.quantization.options import STABILITY_CONST, QuantizationOptions
from fhequant.quantization.params import UniformQuantizationParameters
from fhequant.quantization.quantized_array import QuantizedArray
from fhequant.quantization.quantizer import UniformQuantizer
from fhequant.quantization.stats import MinMaxQuantizationStats
from fhequant.quantization.tensor_stats import (
    MinMaxStatistic,
    PercentileStatistic,
    StatisticSpec,
    TensorStatistic,
    make_statistic,
    register_statistic,
    statistic_from_json,
)
from fhequant.quantization.torch_quantizer import TorchUniformQuantizer

__all__ = [
    "STABILITY_CONST",
    "EntropyStatistic",
    "MSEStatistic",
    "MinMaxQuantizationStats",
    "MinMaxStatistic",
    "PercentileStatistic",
    "QuantizationOptions",
    "QuantizedArray",
    "StatisticSpec",
    "TensorStatistic",
    "TorchUniformQuantizer",
    "UniformQuantizationParameters",
    "UniformQuantizer",
    "fill_from_kwargs",
    "make_statistic",
    "register_statistic",
    "statistic_from_json",
]
