"""Linear algebra: MatMul, Gemm (float32, docs/contract.md §0), BatchNormalization,
LayerNormalization."""

from __future__ import annotations

import numpy as np

from fhequant.errors import ShapeError
from fhequant.onnx.registry import register


@register("MatMul", "A, B")
def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy matmul (stays float32 for float32 operands)."""
    return np.matmul(a, b)


def batch_invariant_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b (b 2-D) with every row computed by the same (1, k) @ (k, m) BLAS call.

    Plain float32 ``np.matmul`` can change by an ulp with the number of rows (BLAS picks its
    kernel and summation order from the shapes), so a streamed computation would differ from a
    whole-batch one (docs/contract.md decision 4). Here a row's result never depends on the other
    rows, at about 1.6x the cost. Not used by the registry's Gemm/MatMul, which keep np.matmul (what
    the reference runs on the whole calibration set).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim < 2 or b.ndim != 2:
        return np.matmul(a, b)
    rows = np.matmul(a.reshape(-1, 1, a.shape[-1]), b)
    return rows.reshape(*a.shape[:-1], b.shape[-1])


def _int_if_integral(v: float) -> float | int:
    """docs/contract.md §5.3: integer-valued alpha/beta become int, so they keep float32 float32."""
    f = float(v)
    # beyond int64, a Python int would turn the product into an object array: keep the float
    return int(f) if f.is_integer() and abs(f) < 2**63 else f


def _swap_last(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2) if np.ndim(x) >= 2 else x


@register("Gemm", "A, B, C?", {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0})
def gemm(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    transA: int = 0,
    transB: int = 0,
) -> np.ndarray:
    """alpha · A' @ B' + beta · C, with numpy broadcasting of C.

    A and B may have more than two axes (the MatMul + Add fusion keeps matmul semantics);
    transA/transB swap the last two axes.
    """
    alpha_, beta_ = _int_if_integral(alpha), _int_if_integral(beta)
    y = np.matmul(_swap_last(a) if transA else a, _swap_last(b) if transB else b)
    if alpha_ != 1:
        y = alpha_ * y
    if c is not None and beta_ != 0:
        y = y + (c if beta_ == 1 else beta_ * c)
    return y


@register(
    "BatchNormalization",
    "X, scale, B, input_mean, input_var",
    {"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0},
    n_outputs=3,
)
def batch_normalization(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    *,
    epsilon: float = 1e-5,
    momentum: float = 0.9,
    training_mode: int = 0,
) -> tuple[np.ndarray, ...]:
    """BatchNorm on axis 1: (x - mean)/sqrt(var + eps)·scale + bias.

    Inference (training_mode 0) uses the running statistics and returns (Y,). Training mode
    (opset 14) uses the batch's mean and population variance over every axis but 1 and also
    returns the updated running statistics, running·momentum + batch·(1 - momentum), as
    onnxruntime; the quantized layer rejects training_mode = 1.
    """
    shape = (1, -1) + (1,) * (np.ndim(x) - 2)
    if int(training_mode):
        axes = tuple(i for i in range(np.ndim(x)) if i != 1)
        batch_mean = np.mean(x, axis=axes)
        batch_var = np.var(x, axis=axes)
        y = (x - batch_mean.reshape(shape)) / np.sqrt(batch_var.reshape(shape) + epsilon)
        y = y * np.reshape(scale, shape) + np.reshape(bias, shape)
        running_mean = np.asarray(mean) * momentum + batch_mean * (1 - momentum)
        running_var = np.asarray(var) * momentum + batch_var * (1 - momentum)
        dtype = np.asarray(x).dtype
        return y.astype(dtype), running_mean.astype(dtype), running_var.astype(dtype)
    m, v = np.reshape(mean, shape), np.reshape(var, shape)
    s, b = np.reshape(scale, shape), np.reshape(bias, shape)
    return ((x - m) / np.sqrt(v + epsilon) * s + b,)


@register(
    "LayerNormalization",
    "X, Scale, B?",
    {"axis": -1, "epsilon": 1e-5, "stash_type": 1},
    n_outputs=3,
)
def layer_normalization(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    axis: int = -1,
    epsilon: float = 1e-5,
    stash_type: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Opset-17 LayerNormalization over the axes from ``axis`` to the last.

    Returns:
        (Y, Mean, InvStdDev); the statistics are computed in float32 (stash_type 1) and Y
        keeps the dtype of x.
    """
    del stash_type
    rank = np.ndim(x)
    if not -rank <= int(axis) < rank:
        raise ShapeError(f"LayerNormalization axis {int(axis)} is out of range for rank {rank}")
    first = int(axis) + rank if int(axis) < 0 else int(axis)
    axes = tuple(range(first, rank))
    xs = np.asarray(x, dtype=np.float32) if np.asarray(x).dtype == np.float16 else np.asarray(x)
    mean = np.mean(xs, axis=axes, keepdims=True)
    centered = xs - mean
    inv_std = 1 / np.sqrt(np.mean(centered * centered, axis=axes, keepdims=True) + epsilon)
    y = centered * inv_std * scale
    if bias is not None:
        y = y + bias
    return y.astype(np.asarray(x).dtype, copy=False), mean, inv_std
