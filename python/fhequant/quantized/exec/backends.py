"""The leaves of the executor: what differs between running in the clear and tracing.

A backend implements leaves only, never a primitive: the few integer operations that numpy
operators cannot express identically on arrays and on concrete Tracers. The executor
(:mod:`fhequant.quantized.exec.executor`) composes them into primitives and names the nodes.

* :class:`ClearBackend`: numpy and the native integer kernels of ``fhequant.kernels``
  (exact int64). It also has *fused* leaves (a whole zp-corrected matmul/conv with its padding
  and rescale in one Rust call, window sums and maxima with built-in padding) that the
  executor uses only when no observer watches the nodes.
* :class:`TracingBackend`: ``concrete.fhe.conv``, ``fhe.maxpool``, ``fhe.zeros``,
  ``fhe.round_bit_pattern`` and ``fhe.univariate`` (concrete imported lazily). Outside
  tracing these functions evaluate on plain numpy arrays, which is how the tests check that
  both backends give the same integers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fhequant import kernels as ik
from fhequant._concrete import fhe_module

__all__ = ["ClearBackend", "TracingBackend", "fhe_module", "is_tracer"]


def is_tracer(x: Any) -> bool:
    """True if x is a concrete-python Tracer (without importing concrete when unused)."""
    cls = type(x)
    return cls.__name__ == "Tracer" and cls.__module__.startswith("concrete.")


_NO_PADS = (0, 0, 0, 0)


class ClearBackend:
    """numpy and the native integer kernels (exact int64)."""

    name = "clear"
    #: has fused leaves (the ``fused_*`` methods), used when nothing watches the nodes
    fused = True

    # -- leaves -----------------------------------------------------------------------------

    def operand(self, x: Any) -> Any:
        """An integer operand as int64."""
        return np.asarray(x, dtype=np.int64)

    def conv_padded(self, x_pad: Any, w: Any, strides: Sequence[int], group: int) -> Any:
        """2-D integer conv of an already padded NCHW tensor."""
        return ik.integer_conv(
            x_pad, w, 0, 0, strides=strides, pads=_NO_PADS, group=group, name="conv"
        )[0]

    def sum_windows(self, x_pad: Any, kernel_shape: Sequence[int], strides: Sequence[int]) -> Any:
        """Per-channel window sums of an already padded tensor."""
        return ik.window_sum(x_pad, kernel_shape, strides, _NO_PADS, 0, 0)

    def max_windows(
        self,
        x_pad: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        dilations: Sequence[int] = (1, 1),
    ) -> Any:
        """Per-channel window maxima of an already padded tensor (dilated windows: numpy)."""
        if tuple(int(d) for d in dilations) == (1, 1):
            return ik.window_max(x_pad, kernel_shape, strides, _NO_PADS, 0)
        return _dilated_window_max(np.asarray(x_pad), kernel_shape, strides, dilations)

    def frame(self, like: Any, shape: tuple[int, ...], value: int) -> Any:
        """A tensor of ``shape`` filled with ``value`` (the border of a padding)."""
        return np.full(shape, value, dtype=np.asarray(like).dtype)

    def round_bits(self, x: Any, lsbs: int, exactness: Any) -> Any:
        """Round the ``lsbs`` low bits (ties up)."""
        return ik.round_bit_pattern(x, lsbs)

    def lookup(self, x: Any, fn: Callable[[Any], Any]) -> Any:
        """``fn`` applied to every element."""
        return fn(x)

    def apply_float(self, fn: Callable[..., Any], operands: Sequence[Any]) -> Any:
        """``fn(*operands)`` evaluated with numpy."""
        return fn(*operands)

    # -- fused leaves (no node is visible inside them) ---------------------------------------

    def fused_matmul(self, a: Any, b: Any, z_w: Any) -> Any:
        """a @ b - z_w·Σ_k a[..., k] in one kernel."""
        return ik.integer_gemm(a, b, 0, z_w, name="matmul")[0]

    def fused_matmul_rescale(
        self, a: Any, b: Any, z_w: Any, lsbs: int, offset: Any, sub: Any, mul: Any, add: Any
    ) -> Any:
        """The zp-corrected matmul, rounded and rescaled, in one kernel."""
        return ik.integer_gemm_rescale(a, b, z_w, lsbs, offset, sub, mul, add, name="matmul")

    def fused_conv(self, x: Any, w: Any, conv: dict[str, Any]) -> Any:
        """The padded, zp-corrected conv in one kernel (``conv``: the executor's keywords)."""
        return ik.integer_conv(
            x, w, conv["pad_value"], conv["z_w"],
            strides=conv["strides"], pads=conv["pads"], group=conv["group"], name="conv",
        )[0]  # fmt: skip

    def fused_conv_rescale(
        self, x: Any, w: Any, conv: dict[str, Any], lsbs: int, rescale: tuple[Any, ...]
    ) -> Any:
        """The padded, zp-corrected conv, rounded and rescaled (offset, sub, mul, add)."""
        return ik.integer_conv_rescale(
            x, w, conv["pad_value"], conv["z_w"], lsbs, *rescale,
            strides=conv["strides"], pads=conv["pads"], group=conv["group"], name="conv",
        )  # fmt: skip

    def fused_matmul_rescale_quant(
        self, a: Any, b: Any, z_w: Any, lsbs: int, rescale: tuple[Any, ...], quant: Any
    ) -> Any:
        """The fused matmul rescale quantized by ``quant`` (scale, zero_point, lo, hi):
        (int8/int16 integers, min, max), or None when the fused kernel does not apply."""
        offset, sub, mul, add = rescale
        return ik.integer_gemm_rescale_quant(
            a, b, z_w, lsbs, offset, sub, mul, add, quant, name="matmul"
        )

    def fused_accumulator_rescale_quant(
        self, acc: Any, lsbs: int, rescale: tuple[Any, ...], quant: Any
    ) -> Any:
        """:meth:`fused_matmul_rescale_quant` of a product already computed (``acc``)."""
        offset, sub, mul, add = rescale
        return ik.integer_accumulator_rescale_quant(
            acc, lsbs, offset, sub, mul, add, quant, name="matmul"
        )

    def fused_conv_rescale_quant(
        self, x: Any, w: Any, conv: dict[str, Any], lsbs: int, rescale: tuple[Any, ...], quant: Any
    ) -> Any:
        """The fused conv rescale quantized by ``quant``, as
        :meth:`fused_matmul_rescale_quant`."""
        offset, sub, mul, add = rescale
        return ik.integer_conv_rescale_quant(
            x, w, conv["pad_value"], conv["z_w"], lsbs, offset, sub, mul, add, quant,
            strides=conv["strides"], pads=conv["pads"], group=conv["group"], name="conv",
        )  # fmt: skip

    def fused_window_sum(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
        ceil_mode: int,
    ) -> Any:
        """Window sums with the padding (and ceil-mode extension) built in."""
        return ik.window_sum(x, kernel_shape, strides, pads, pad_value, ceil_mode)

    def fused_maxpool(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
    ) -> Any:
        """Window maxima with the padding built in."""
        return ik.window_max(x, kernel_shape, strides, pads, pad_value)

    def fused_unfold(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
    ) -> Any:
        """Sliding blocks with the padding built in."""
        return ik.unfold(x, kernel_shape, strides, pads, pad_value)

    def fused_pad(self, x: Any, pads: Sequence[int], value: int) -> Any:
        """np.pad of the last two axes."""
        hb, wb, he, we = (int(p) for p in pads)
        x = np.asarray(x)
        return np.pad(
            x,
            ((0, 0),) * (x.ndim - 2) + ((hb, he), (wb, we)),
            mode="constant",
            constant_values=value,
        )


class TracingBackend:
    """concrete.fhe extensions that concrete-python can trace."""

    name = "tracing"
    fused = False

    def operand(self, x: Any) -> Any:
        return x

    def op_scope(self, name: str) -> Any:
        """Tag the nodes traced inside the ``with`` block with the op's name (concrete's
        ``fhe.tag``: the circuit's statistics per tag are per op)."""
        return fhe_module().tag(name)

    def conv_padded(self, x_pad: Any, w: Any, strides: Sequence[int], group: int) -> Any:
        fhe = fhe_module()
        return fhe.conv(x_pad, w, strides=tuple(int(s) for s in strides), group=int(group))

    def sum_windows(self, x_pad: Any, kernel_shape: Sequence[int], strides: Sequence[int]) -> Any:
        fhe = fhe_module()
        kernel = identity_kernel(int(x_pad.shape[1]), kernel_shape)
        return fhe.conv(x_pad, kernel, strides=tuple(int(s) for s in strides))

    def max_windows(
        self,
        x_pad: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        dilations: Sequence[int] = (1, 1),
    ) -> Any:
        fhe = fhe_module()
        return fhe.maxpool(
            x_pad,
            kernel_shape=tuple(int(k) for k in kernel_shape),
            strides=tuple(int(s) for s in strides),
            dilations=tuple(int(d) for d in dilations),
        )

    def frame(self, like: Any, shape: tuple[int, ...], value: int) -> Any:
        fhe = fhe_module()
        out = fhe.zeros(shape)
        return out + int(value) if value != 0 else out

    def round_bits(self, x: Any, lsbs: int, exactness: Any) -> Any:
        fhe = fhe_module()
        return fhe.round_bit_pattern(x, lsbs, overflow_protection=False, exactness=exactness)

    def lookup(self, x: Any, fn: Callable[[Any], Any]) -> Any:
        fhe = fhe_module()
        return fhe.univariate(fn)(x)

    def apply_float(self, fn: Callable[..., Any], operands: Sequence[Any]) -> Any:
        """``fn`` of the Tracers among ``operands`` as ONE generic node of the traced graph.

        concrete traces a generic node without looking inside ``fn`` (it evaluates ``fn`` on
        arrays when it builds the table), so any numpy or scipy code is accepted; its float
        result is fused with the surrounding float nodes into one table lookup. One Tracer:
        ``fhe.univariate``; several (float values that all derive from one encrypted
        integer): ``fhe.multivariate``, which concrete fuses into the same single table as
        long as the node is not the last of the float chain (its result is kept float, so
        the quantization after it is). Operands that are not Tracers are captured as
        constants. Without any Tracer, ``fn`` is evaluated.
        """
        fhe = fhe_module()
        where = [i for i, a in enumerate(operands) if is_tracer(a)]
        if not where:
            return fn(*operands)
        args = list(operands)

        def of_tracers(*values: Any) -> Any:
            for i, v in zip(where, values, strict=True):
                args[i] = v
            return fn(*args)

        def of_tracers_float(*values: Any) -> Any:
            # a float result keeps the node inside concrete's float subgraph (fused)
            out = of_tracers(*values)
            return out if np.asarray(out).dtype.kind == "f" else np.asarray(out, np.float64)

        # a name that is no numpy operation concrete converts natively (add, multiply, ...)
        name = f"float_{getattr(fn, '__name__', 'function')}"
        of_tracers.__name__ = of_tracers_float.__name__ = name
        tracers = [operands[i] for i in where]
        if len(tracers) == 1:
            return fhe.univariate(of_tracers)(tracers[0])
        return fhe.multivariate(of_tracers_float)(*tracers)


def _dilated_window_max(
    x: Any, kernel_shape: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> Any:
    """Window maxima of an NCHW integer tensor with dilated windows (no padding)."""
    (kh, kw), (sh, sw), (dh, dw) = (
        tuple(int(v) for v in t) for t in (kernel_shape, strides, dilations)
    )
    h, w = int(x.shape[-2]), int(x.shape[-1])
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (w - (kw - 1) * dw - 1) // sw + 1
    out: Any = None
    for i in range(kh):
        for j in range(kw):
            tap = x[
                ...,
                i * dh : i * dh + (oh - 1) * sh + 1 : sh,
                j * dw : j * dw + (ow - 1) * sw + 1 : sw,
            ]
            out = tap.copy() if out is None else np.maximum(out, tap)
    return out


def identity_kernel(n_channels: int, kernel_shape: Sequence[int]) -> Any:
    """(C, C, kh, kw) with K[c, c] = 1: a per-channel window sum as a conv."""
    kh, kw = (int(k) for k in kernel_shape)
    kernel = np.zeros((n_channels, n_channels, kh, kw), dtype=np.int64)
    for c in range(n_channels):
        kernel[c, c] = 1
    return kernel
