"""The two executors of the ops' integer math: clear (numpy/Rust) and tracing (concrete.fhe).

Each op writes its integer math once, against the :class:`Executor` interface below; float
rescaling and quantization are plain numpy operators, which concrete-python traces and fuses
into table lookups by itself. Only the primitives that concrete-python cannot trace from
numpy (convolution, max pooling, padding, bit-pattern rounding, explicit table lookups) differ
between the executors:

* :class:`ClearExecutor`: numpy int64 arithmetic, used for calibration and ``fhe="disable"``;
* :class:`TracingExecutor`: ``concrete.fhe.conv``, ``fhe.maxpool``, ``fhe.round_bit_pattern``,
  ``fhe.univariate`` and ``fhe.zeros``, so that ``concrete.fhe.Compiler`` can trace a forward.
  Outside tracing these functions evaluate on plain numpy arrays, which is how the tests
  check that both executors give the same integers.

``executor_for(*arrays)`` picks the tracing executor when an operand is a concrete Tracer,
unless ``use_executor`` forced one.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view as _sliding_window_view

__all__ = [
    "CLEAR",
    "TRACING",
    "ClearExecutor",
    "Executor",
    "TracingExecutor",
    "executor_for",
    "fhe_module",
    "is_tracer",
    "use_executor",
]


def sliding_window_view(x: Any, shape: tuple[int, int], axis: tuple[int, int]) -> Any:
    """numpy's sliding_window_view (typed loosely)."""
    return _sliding_window_view(x, shape, axis=axis)  # type: ignore[call-overload]


def fhe_module() -> Any:
    """``concrete.fhe``, imported with its pkg_resources deprecation warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        from concrete import fhe
    return fhe


def is_tracer(x: Any) -> bool:
    """True if x is a concrete-python Tracer (without importing concrete when unused)."""
    cls = type(x)
    return cls.__name__ == "Tracer" and cls.__module__.startswith("concrete.")


def _pads4(pads: Sequence[int]) -> tuple[int, int, int, int]:
    hb, wb, he, we = (int(p) for p in pads)
    return hb, wb, he, we


class Executor:
    """Integer primitives the quantized ops are written against (all int64)."""

    name = "abstract"

    def matmul(self, a: Any, b: Any, z_w: Any = 0) -> Any:
        """a @ b - z_w·Σ_k a[..., k] (keepdims): the zp-corrected integer matmul."""
        acc = a @ b
        if z_w != 0:
            acc = acc - z_w * np.sum(a, axis=-1, keepdims=True)
        return acc

    def sum(self, x: Any, axis: Any, keepdims: bool) -> Any:
        """Integer sum over axes."""
        return np.sum(x, axis=axis, keepdims=keepdims)

    def pad(self, x: Any, pads: Sequence[int], value: int) -> Any:
        """Pad the last two axes of a 4-D tensor; pads = [h_begin, w_begin, h_end, w_end]."""
        raise NotImplementedError

    def conv(
        self,
        x: Any,
        w: Any,
        *,
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
        group: int,
        z_w: Any = 0,
    ) -> Any:
        """2-D integer conv of x padded with pad_value, minus z_w·conv(x_pad, ones)."""
        raise NotImplementedError

    def window_sum(self, x: Any, kernel_shape: Sequence[int], strides: Sequence[int]) -> Any:
        """Per-channel sum over each khxkw window of a 4-D tensor (no padding)."""
        raise NotImplementedError

    def maxpool(self, x: Any, kernel_shape: Sequence[int], strides: Sequence[int]) -> Any:
        """Per-channel max over each khxkw window of a 4-D tensor (no padding)."""
        raise NotImplementedError

    def round_bit_pattern(self, x: Any, lsbs_to_remove: int, exactness: Any = None) -> Any:
        """floor((x + 2^(k-1)) / 2^k)·2^k: round the k low bits, ties up."""
        raise NotImplementedError

    def tlu(self, x: Any, fn: Callable[[Any], Any]) -> Any:
        """A table lookup: fn applied to every element of an integer tensor."""
        raise NotImplementedError

    def copy(self, x: Any) -> Any:
        """An identity table lookup (resets the bit width of a value in the circuit)."""
        return self.tlu(x, _identity)


def _identity(x: Any) -> Any:
    return x


class ClearExecutor(Executor):
    """numpy int64 kernels; used for calibration and clear inference."""

    name = "clear"

    def pad(self, x: Any, pads: Sequence[int], value: int) -> Any:
        hb, wb, he, we = _pads4(pads)
        if hb == wb == he == we == 0:
            return x
        x = np.asarray(x)
        return np.pad(
            x,
            ((0, 0),) * (x.ndim - 2) + ((hb, he), (wb, we)),
            mode="constant",
            constant_values=value,
        )

    def conv(
        self,
        x: Any,
        w: Any,
        *,
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
        group: int,
        z_w: Any = 0,
    ) -> Any:
        x_pad = np.asarray(self.pad(x, pads, pad_value), dtype=np.int64)
        w = np.asarray(w, dtype=np.int64)
        if z_w != 0:
            w = w - np.int64(z_w)
        n_out, c_per_group, kh, kw = w.shape
        o_per_group = n_out // group
        sh, sw = (int(s) for s in strides)
        outs = []
        for g in range(group):
            xg = x_pad[:, g * c_per_group : (g + 1) * c_per_group]
            win = sliding_window_view(xg, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
            wg = w[g * o_per_group : (g + 1) * o_per_group]
            outs.append(np.einsum("ncijkl,ockl->noij", win, wg))
        return np.concatenate(outs, axis=1)

    def window_sum(self, x: Any, kernel_shape: Sequence[int], strides: Sequence[int]) -> Any:
        kh, kw = (int(k) for k in kernel_shape)
        sh, sw = (int(s) for s in strides)
        win = sliding_window_view(np.asarray(x, dtype=np.int64), (kh, kw), axis=(2, 3))
        return win[:, :, ::sh, ::sw].sum(axis=(-2, -1))

    def maxpool(self, x: Any, kernel_shape: Sequence[int], strides: Sequence[int]) -> Any:
        kh, kw = (int(k) for k in kernel_shape)
        sh, sw = (int(s) for s in strides)
        win = sliding_window_view(np.asarray(x, dtype=np.int64), (kh, kw), axis=(2, 3))
        return win[:, :, ::sh, ::sw].max(axis=(-2, -1))

    def round_bit_pattern(self, x: Any, lsbs_to_remove: int, exactness: Any = None) -> Any:
        k = int(lsbs_to_remove)
        if k <= 0:
            return x
        x = np.asarray(x, dtype=np.int64)
        return ((x + (np.int64(1) << (k - 1))) >> k) << k

    def tlu(self, x: Any, fn: Callable[[Any], Any]) -> Any:
        return fn(x)

    def copy(self, x: Any) -> Any:
        return x


class TracingExecutor(Executor):
    """numpy operators and concrete.fhe extensions that concrete-python can trace."""

    name = "tracing"

    def pad(self, x: Any, pads: Sequence[int], value: int) -> Any:
        fhe = fhe_module()

        hb, wb, he, we = _pads4(pads)
        if hb == wb == he == we == 0:
            return x
        shape = tuple(x.shape)
        h, w = shape[-2], shape[-1]
        out = fhe.zeros((*shape[:-2], h + hb + he, w + wb + we))
        if value != 0:
            out = out + int(value)
        index = (slice(None),) * (len(shape) - 2) + (slice(hb, hb + h), slice(wb, wb + w))
        out[index] = x
        return out

    def conv(
        self,
        x: Any,
        w: Any,
        *,
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
        group: int,
        z_w: Any = 0,
    ) -> Any:
        fhe = fhe_module()

        x_pad = self.pad(x, pads, pad_value)
        strides = tuple(int(s) for s in strides)
        w = np.asarray(w, dtype=np.int64)
        acc = fhe.conv(x_pad, w, strides=strides, group=int(group))
        if z_w != 0:
            ones = np.ones_like(w)
            acc = acc - int(z_w) * fhe.conv(x_pad, ones, strides=strides, group=int(group))
        return acc

    def window_sum(self, x: Any, kernel_shape: Sequence[int], strides: Sequence[int]) -> Any:
        fhe = fhe_module()

        n_channels = int(x.shape[1])
        kh, kw = (int(k) for k in kernel_shape)
        kernel = np.zeros((n_channels, n_channels, kh, kw), dtype=np.int64)
        for c in range(n_channels):
            kernel[c, c] = 1
        return fhe.conv(x, kernel, strides=tuple(int(s) for s in strides))

    def maxpool(self, x: Any, kernel_shape: Sequence[int], strides: Sequence[int]) -> Any:
        fhe = fhe_module()

        return fhe.maxpool(
            x,
            kernel_shape=tuple(int(k) for k in kernel_shape),
            strides=tuple(int(s) for s in strides),
        )

    def round_bit_pattern(self, x: Any, lsbs_to_remove: int, exactness: Any = None) -> Any:
        fhe = fhe_module()

        if int(lsbs_to_remove) <= 0:
            return x
        return fhe.round_bit_pattern(
            x, int(lsbs_to_remove), overflow_protection=False, exactness=exactness
        )

    def tlu(self, x: Any, fn: Callable[[Any], Any]) -> Any:
        fhe = fhe_module()

        return fhe.univariate(fn)(x)


CLEAR = ClearExecutor()
TRACING = TracingExecutor()

_FORCED: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "fhequant_forced_executor", default=None
)


@contextlib.contextmanager
def use_executor(executor: Executor) -> Iterator[Executor]:
    """Force an executor for the ops run inside the ``with`` block.

    Args:
        executor: CLEAR or TRACING (or any Executor).

    Yields:
        The executor.
    """
    token = _FORCED.set(executor)
    try:
        yield executor
    finally:
        _FORCED.reset(token)


def executor_for(*arrays: Any) -> Executor:
    """The forced executor, else TRACING if an operand is a Tracer, else CLEAR."""
    forced = _FORCED.get()
    if forced is not None:
        return forced
    if any(is_tracer(a) for a in arrays):
        return TRACING
    return CLEAR
