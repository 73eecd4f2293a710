"""Comparisons, logical ops and Where.

``fn`` returns bools (as onnxruntime); ``quant_fn`` returns float64 0/1 (docs/contract.md §5.3), so
that the result can be quantized and fused into a table lookup.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant.onnx.ops._util import quiet
from fhequant.onnx.registry import as_float64_01, register


def _binary(name: str, fn: Any, doc: str, *, logical: bool = False) -> None:
    def impl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if logical:
            a, b = np.asarray(a) != 0, np.asarray(b) != 0
        return fn(a, b)

    def quant_impl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return as_float64_01(impl(a, b))

    impl.__name__ = quant_impl.__name__ = name.lower()
    impl.__doc__ = f"{doc} (bool)."
    quant_impl.__doc__ = f"{doc} as float64 0/1 (docs/contract.md §5.3)."
    register(name, "A, B", quant_fn=quant_impl)(impl)


_binary("Equal", np.equal, "a == b")
_binary("Greater", np.greater, "a > b")
_binary("GreaterOrEqual", np.greater_equal, "a >= b")
_binary("Less", np.less, "a < b")
_binary("LessOrEqual", np.less_equal, "a <= b")
_binary("And", np.logical_and, "a and b", logical=True)
_binary("Or", np.logical_or, "a or b", logical=True)
_binary("Xor", np.logical_xor, "a xor b", logical=True)


def not_quant(x: np.ndarray) -> np.ndarray:
    """docs/contract.md §5.3 Not: float64 0/1."""
    return as_float64_01(np.logical_not(x))


@register("Not", "X", quant_fn=not_quant)
def not_(x: np.ndarray) -> np.ndarray:
    """ONNX Not (bool)."""
    return np.logical_not(x)


@quiet
def where_quant(c: np.ndarray, t: np.ndarray, f: np.ndarray) -> np.ndarray:
    """docs/contract.md §5.3 Where: c * t + (1 - c) * f (c is 0/1, bool or float)."""
    return c * t + (1 - c) * f


@register("Where", "condition, X, Y", quant_fn=where_quant)
def where(c: np.ndarray, t: np.ndarray, f: np.ndarray) -> np.ndarray:
    """ONNX Where: t where c else f."""
    return np.where(np.asarray(c) != 0, t, f)
