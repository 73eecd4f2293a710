"""Activations: Relu, Sigmoid, Tanh, Softplus, Elu family, PRelu, hard ones, Gelu, Softmax, Clip."""

from __future__ import annotations

import math

import numpy as np
import scipy.special

from fhequant.onnx.ops._util import quiet
from fhequant.onnx.registry import register

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_GAMMA = 1.0507009873554804934193349852946


@register("Relu", "X")
def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0)."""
    return np.maximum(x, 0)


@register("Sigmoid", "X")
@quiet
def sigmoid(x: np.ndarray) -> np.ndarray:
    """docs/contract.md §5.3: exp(-logaddexp(0, -x))."""
    return np.exp(-np.logaddexp(0, -x))


@register("Tanh", "X")
def tanh(x: np.ndarray) -> np.ndarray:
    """tanh(x)."""
    return np.tanh(x)


@register("Softplus", "X")
@quiet
def softplus(x: np.ndarray) -> np.ndarray:
    """docs/contract.md §5.3: log(exp(x) + 1) (inf for x above ~88 in float32)."""
    return np.log(np.exp(x) + 1)


@register("Softsign", "X")
def softsign(x: np.ndarray) -> np.ndarray:
    """x / (1 + |x|)."""
    return x / (1 + np.abs(x))


@register("Elu", "X", {"alpha": 1.0})
@quiet
def elu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """x if x > 0 else alpha * (exp(x) - 1)."""
    return np.where(x > 0, x, alpha * (np.exp(x) - 1))


@register("Selu", "X", {"alpha": SELU_ALPHA, "gamma": SELU_GAMMA})
@quiet
def selu(x: np.ndarray, *, alpha: float = SELU_ALPHA, gamma: float = SELU_GAMMA) -> np.ndarray:
    """gamma * (x if x > 0 else alpha * (exp(x) - 1))."""
    return np.where(x > 0, gamma * x, (gamma * alpha) * (np.exp(x) - 1))


@register("Celu", "X", {"alpha": 1.0})
@quiet
def celu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1)), in the dtype of x (bfloat16 too)."""
    x = np.asarray(x)
    out = np.maximum(0, x) + np.minimum(0, alpha * (np.exp(x / alpha) - 1))
    floating = x.dtype.kind == "f" or x.dtype.type.__module__ == "ml_dtypes"  # bfloat16
    return out.astype(x.dtype) if floating else out


@register("LeakyRelu", "X", {"alpha": 0.01})
def leaky_relu(x: np.ndarray, *, alpha: float = 0.01) -> np.ndarray:
    """x if x >= 0 else alpha * x."""
    return np.where(x >= 0, x, alpha * x)


def prelu_quant(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """docs/contract.md §5.3 PRelu: min(0, slope * x) + max(0, x) (differs from ONNX for negative
    slopes)."""
    return np.minimum(0, slope * x) + np.maximum(0, x)


@register("PRelu", "X, slope", quant_fn=prelu_quant)
def prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """ONNX PRelu: x if x >= 0 else slope * x."""
    return np.where(x >= 0, x, slope * x)


@register("ThresholdedRelu", "X", {"alpha": 1.0})
def thresholded_relu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """x if x > alpha else 0."""
    return np.where(x > alpha, x, 0).astype(np.asarray(x).dtype, copy=False)


@register("HardSigmoid", "X", {"alpha": 0.2, "beta": 0.5})
def hard_sigmoid(x: np.ndarray, *, alpha: float = 0.2, beta: float = 0.5) -> np.ndarray:
    """max(0, min(1, alpha * x + beta))."""
    return np.maximum(0, np.minimum(1, alpha * x + beta))


@register("HardSwish", "X")
def hard_swish(x: np.ndarray) -> np.ndarray:
    """x * max(0, min(1, x / 6 + 0.5))."""
    return x * np.maximum(0, np.minimum(1, x / 6 + 0.5))


@register("Mish", "X")
@quiet
def mish(x: np.ndarray) -> np.ndarray:
    """x * tanh(log1p(exp(x)))."""
    return x * np.tanh(np.logaddexp(0, x))


@register("Gelu", "X", {"approximate": "none"})
def gelu(x: np.ndarray, *, approximate: str = "none") -> np.ndarray:
    """0.5 x (1 + erf(x / sqrt 2)), or the tanh approximation (opset 20)."""
    if approximate == "tanh":
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
        return 0.5 * x * (1 + np.tanh(inner))
    return 0.5 * x * (1 + scipy.special.erf(x / math.sqrt(2)))


@register("Clip", "input, min?, max?")
def clip(x: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> np.ndarray:
    """min(max(x, lo), hi); an absent bound does not clip."""
    if lo is not None:
        x = np.maximum(x, lo)
    if hi is not None:
        x = np.minimum(x, hi)
    return x


@register("Softmax", "input", {"axis": -1})
@quiet
def softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) along ``axis``."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


@register("LogSoftmax", "input", {"axis": -1})
@quiet
def log_softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """x - max - log(sum(exp(x - max))) along ``axis``."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
