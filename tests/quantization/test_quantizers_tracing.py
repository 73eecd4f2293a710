"""QuantizedArray and UniformQuantizer inside a concrete-python trace (tracers are kept)."""

from __future__ import annotations

from typing import Any

import numpy as np
from concrete import fhe

from fhequant import QuantizedArray


def test_quant_and_dequant_trace_like_numpy() -> None:
    quantizer = QuantizedArray(5, np.linspace(-2.0, 3.0, 20)).quantizer
    parts = {
        "options": quantizer.quant_options,
        "stats": quantizer.quant_stats,
        "params": quantizer.quant_params,
    }

    def requantize(x: Any) -> Any:
        qa = QuantizedArray(5, x * 0.37 - 1.0, **parts)
        return qa.qvalues

    def dequant_then_quant(q: Any) -> Any:
        qa = QuantizedArray(5, q, value_is_float=False, **parts)
        return quantizer.quant(qa.values * 0.5)

    x = np.arange(12)
    for function, expected in (
        (requantize, QuantizedArray(5, x * 0.37 - 1.0, **parts).qvalues),
        (dequant_then_quant, quantizer.quant(quantizer.dequant(x) * 0.5)),
    ):
        graph = fhe.Compiler(function, {"x" if function is requantize else "q": "encrypted"})
        traced = graph.trace(inputset=[x])
        np.testing.assert_array_equal(traced(x), expected)
