"""The two executors of the ops' integer math: clear (numpy/Rust) and tracing (concrete.fhe).

Each op writes its integer math once, against the :class:`Executor` interface below; float
rescaling and quantization are plain numpy operators, which concrete-python traces and fuses
into table lookups by itself. Only the primitives that concrete-python cannot trace from
numpy (convolution, max pooling, padding, bit-pattern rounding, explicit table lookups) differ
between the executors:

* :class:`ClearExecutor`: the native integer kernels (``fhequant.integer_kernels``), used for
  calibration and ``fhe="disable"``;
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
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from fhequant import kernels as ik
from fhequant._concrete import fhe_module

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


def is_tracer(x: Any) -> bool:
    """True if x is a concrete-python Tracer (without importing concrete when unused)."""
    cls = type(x)
    return cls.__name__ == "Tracer" and cls.__module__.startswith("concrete.")


def _pads4(pads: Sequence[int]) -> tuple[int, int, int, int]:
    hb, wb, he, we = (int(p) for p in pads)
    return hb, wb, he, we


class Executor:
    """Integer primitives the quantized ops are written against (int64 in, int64 out).

    Spatial primitives take NCHW tensors and ONNX pads [h_begin, w_begin, h_end, w_end],
    filled with ``pad_value`` (the input zero point).
    """

    name = "abstract"

    def matmul(self, a: Any, b: Any, z_w: Any = 0) -> Any:
        """a @ b - z_w·Σ_k a[..., k] (keepdims): the zp-corrected integer matmul."""
        raise NotImplementedError

    def matmul_rescale(
        self,
        a: Any,
        b: Any,
        z_w: Any,
        lsbs: int,
        exactness: Any,
        offset: Any,
        sub: Any,
        mul: Any,
        add: Any = None,
    ) -> Any:
        """((float64(round(matmul(a, b, z_w))) + offset) - sub)·mul (+ add), where round
        removes ``lsbs`` bits: a hidden Gemm up to its output quantization (SPEC §3.1)."""
        acc = self.round_bit_pattern(self.matmul(a, b, z_w), lsbs, exactness)
        return ik.float64_rescale(acc, offset, sub, mul, add)

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

    def conv_rescale(
        self,
        x: Any,
        w: Any,
        *,
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
        group: int,
        z_w: Any,
        lsbs: int,
        exactness: Any,
        offset: Any,
        sub: Any,
        mul: Any,
        add: Any = None,
    ) -> Any:
        """((float64(round(conv(x, w, z_w))) + offset) - sub)·mul (+ add), where round
        removes ``lsbs`` bits: a hidden Conv up to its output quantization (SPEC §3.2)."""
        acc = self.conv(x, w, strides=strides, pads=pads, pad_value=pad_value, group=group, z_w=z_w)
        acc = self.round_bit_pattern(acc, lsbs, exactness)
        return ik.float64_rescale(acc, offset, sub, mul, add)

    def window_sum(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
        ceil_mode: int = 0,
    ) -> Any:
        """Per-channel window sums; ceil_mode 1 adds 0-padding up to the ceil output size."""
        raise NotImplementedError

    def maxpool(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
    ) -> Any:
        """Per-channel window maxima."""
        raise NotImplementedError

    def unfold(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
    ) -> Any:
        """Sliding blocks (N, C·kh·kw, L) in torch column order."""
        raise NotImplementedError

    def pad(self, x: Any, pads: Sequence[int], value: int) -> Any:
        """Pad the last two axes; pads = [h_begin, w_begin, h_end, w_end]."""
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

    # Plain integer arithmetic: numpy operators on arrays and Tracers alike. The ops call
    # these (instead of the operators) where the bit-width report must see the node.

    def add(self, x: Any, y: Any) -> Any:
        """x + y, both encrypted."""
        return x + y

    def subtract(self, x: Any, y: Any) -> Any:
        """x - y, both encrypted."""
        return x - y

    def multiply(self, x: Any, y: Any) -> Any:
        """x · y, both encrypted."""
        return x * y

    def add_constant(self, x: Any, c: Any) -> Any:
        """x + c with a clear integer constant c."""
        return x + c

    def multiply_constant(self, c: Any, x: Any) -> Any:
        """c · x with a clear integer constant c."""
        return c * x

    def sum(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        """Σ over one axis."""
        return np.sum(x, axis=axis, keepdims=keepdims)


def _identity(x: Any) -> Any:
    return x


class ClearExecutor(Executor):
    """The native integer kernels of ``fhequant.integer_kernels`` (exact int64)."""

    name = "clear"

    def _observes(self, primitive: str) -> bool:
        """Whether a subclass overrides ``primitive`` or ``round_bit_pattern`` (as
        fhe.recording does to see each step): then the fused kernels are not used and the
        steps run one by one through the overrides."""
        cls = type(self)
        return any(
            getattr(cls, name) is not getattr(ClearExecutor, name)
            for name in (primitive, "round_bit_pattern")
        )

    def matmul(self, a: Any, b: Any, z_w: Any = 0) -> Any:
        return ik.integer_gemm(a, b, 0, z_w, name="matmul")[0]

    def matmul_rescale(
        self,
        a: Any,
        b: Any,
        z_w: Any,
        lsbs: int,
        exactness: Any,
        offset: Any,
        sub: Any,
        mul: Any,
        add: Any = None,
    ) -> Any:
        if self._observes("matmul"):
            return super().matmul_rescale(a, b, z_w, lsbs, exactness, offset, sub, mul, add)
        return ik.integer_gemm_rescale(a, b, z_w, lsbs, offset, sub, mul, add, name="matmul")

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
        return ik.integer_conv(
            x, w, pad_value, z_w, strides=strides, pads=pads, group=group, name="conv"
        )[0]

    def conv_rescale(
        self,
        x: Any,
        w: Any,
        *,
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
        group: int,
        z_w: Any,
        lsbs: int,
        exactness: Any,
        offset: Any,
        sub: Any,
        mul: Any,
        add: Any = None,
    ) -> Any:
        if self._observes("conv"):
            return super().conv_rescale(
                x, w, strides=strides, pads=pads, pad_value=pad_value, group=group,
                z_w=z_w, lsbs=lsbs, exactness=exactness, offset=offset, sub=sub, mul=mul,
                add=add,
            )  # fmt: skip
        return ik.integer_conv_rescale(
            x, w, pad_value, z_w, lsbs, offset, sub, mul, add,
            strides=strides, pads=pads, group=group, name="conv",
        )  # fmt: skip

    def window_sum(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
        ceil_mode: int = 0,
    ) -> Any:
        return ik.window_sum(x, kernel_shape, strides, pads, pad_value, ceil_mode)

    def maxpool(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
    ) -> Any:
        return ik.window_max(x, kernel_shape, strides, pads, pad_value)

    def unfold(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
    ) -> Any:
        return ik.unfold(x, kernel_shape, strides, pads, pad_value)

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

    def round_bit_pattern(self, x: Any, lsbs_to_remove: int, exactness: Any = None) -> Any:
        if int(lsbs_to_remove) <= 0:
            return x
        return ik.round_bit_pattern(x, int(lsbs_to_remove))

    def tlu(self, x: Any, fn: Callable[[Any], Any]) -> Any:
        return fn(x)

    def copy(self, x: Any) -> Any:
        return x


def _identity_kernel(n_channels: int, kernel_shape: Sequence[int]) -> Any:
    """(C, C, kh, kw) with K[c, c] = 1: a per-channel window sum as a conv."""
    kh, kw = (int(k) for k in kernel_shape)
    kernel = np.zeros((n_channels, n_channels, kh, kw), dtype=np.int64)
    for c in range(n_channels):
        kernel[c, c] = 1
    return kernel


def _unfold_kernel(n_channels: int, kernel_shape: Sequence[int]) -> Any:
    """(C·kh·kw, 1, kh, kw): output channel c·kh·kw + i·kw + j picks cell (i, j) of channel c."""
    kh, kw = (int(k) for k in kernel_shape)
    kernel = np.zeros((n_channels * kh * kw, 1, kh, kw), dtype=np.int64)
    for c in range(n_channels):
        for i in range(kh):
            for j in range(kw):
                kernel[c * kh * kw + i * kw + j, 0, i, j] = 1
    return kernel


class TracingExecutor(Executor):
    """numpy operators and concrete.fhe extensions that concrete-python can trace."""

    name = "tracing"

    def matmul(self, a: Any, b: Any, z_w: Any = 0) -> Any:
        acc = a @ b
        if z_w != 0:
            acc = acc - int(z_w) * np.sum(a, axis=-1, keepdims=True)
        return acc

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

    def window_sum(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
        ceil_mode: int = 0,
    ) -> Any:
        fhe = fhe_module()
        h, w = int(x.shape[-2]), int(x.shape[-1])
        x = self.pad(x, pads, pad_value)
        if ceil_mode:
            extra_h, extra_w = ik.ceil_mode_extension((h, w), kernel_shape, strides, pads)
            x = self.pad(x, (0, 0, extra_h, extra_w), 0)
        kernel = _identity_kernel(int(x.shape[1]), kernel_shape)
        return fhe.conv(x, kernel, strides=tuple(int(s) for s in strides))

    def maxpool(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
    ) -> Any:
        fhe = fhe_module()
        return fhe.maxpool(
            self.pad(x, pads, pad_value),
            kernel_shape=tuple(int(k) for k in kernel_shape),
            strides=tuple(int(s) for s in strides),
        )

    def unfold(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
    ) -> Any:
        n_channels = int(x.shape[1])
        blocks = self.conv(
            x,
            _unfold_kernel(n_channels, kernel_shape),
            strides=strides,
            pads=pads,
            pad_value=pad_value,
            group=n_channels,
        )
        n, cols, oh, ow = (int(d) for d in blocks.shape)
        return blocks.reshape(n, cols, oh * ow)

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
