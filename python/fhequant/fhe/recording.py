"""Recording and hinting executors: the integer nodes a traced forward creates (SPEC §7).

concrete-python gives every integer node of the traced graph the width of the smallest
``Integer`` holding the node's range over the inputset (``Integer.that_can_represent``: the
counting rule of ``fhequant.integer_kernels.bit_width``), or a larger ``fhe.hint`` width;
``graph.maximum_integer_bit_width()`` is the maximum over all nodes, constants included.

:class:`RecordingExecutor` runs the ops' integer math like the clear executor and records,
for every integer value the tracing executor turns into a graph node, its observed range and
a worst-case range from interval arithmetic (an op input ranges over its whole integer type,
or over the module input quantizer's clip range). :class:`HintingExecutor` is the tracing
executor of ``accumulator_bounds="worst_case"``: it hints each recorded node with its
worst-case range, so the circuit is exact for every in-range input. :func:`op_scope` forces
one of them and tells it which op is running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fhequant import kernels as ik
from fhequant.quantized.ops.executors import (
    ClearExecutor,
    TracingExecutor,
    fhe_module,
    use_executor,
)

__all__ = [
    "MAX_TLU_BIT_WIDTH",
    "HintingExecutor",
    "RecordingExecutor",
    "ValueRecord",
    "op_scope",
    "type_range",
]

MAX_TLU_BIT_WIDTH = 16

_MODULE = "<module>"


def type_range(lo: int, hi: int) -> tuple[int, int]:
    """The range of the smallest concrete Integer type holding [lo, hi]."""
    bits = ik.bit_width(int(lo), int(hi))
    if lo < 0:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@dataclass
class ValueRecord:
    """One integer node of the traced graph.

    Attributes:
        op: name of the op that produced it ("<module>" for module inputs).
        label: what it is (input, constant, matmul, sum, zw_sum, accumulator, rounded, ...).
        lo: observed minimum over the inputset.
        hi: observed maximum over the inputset.
        wc_lo: worst-case minimum (interval arithmetic), None for constants.
        wc_hi: worst-case maximum, None for constants.
        feeds_tlu: whether the value is the input of a table lookup.
        lsbs_removed: for a rounded value, the low bits the rounding removes.
        pre_round_bits: for a rounded value, the observed width of the value before rounding.
        pre_round_wc_bits: the same with the worst-case range.
    """

    op: str
    label: str
    lo: int
    hi: int
    wc_lo: int | None = None
    wc_hi: int | None = None
    feeds_tlu: bool = False
    lsbs_removed: int = 0
    pre_round_bits: int = 0
    pre_round_wc_bits: int = 0

    @property
    def bits(self) -> int:
        """Observed width (concrete's rule)."""
        return ik.bit_width(self.lo, self.hi)

    @property
    def wc_bits(self) -> int:
        """Worst-case width (the observed one for constants)."""
        if self.wc_lo is None or self.wc_hi is None:
            return self.bits
        return ik.bit_width(min(self.wc_lo, self.lo), max(self.wc_hi, self.hi))

    def width(self, worst_case: bool) -> int:
        """The width concrete will see: observed, or the hinted worst case."""
        return max(self.bits, self.wc_bits) if worst_case else self.bits


def _range(x: Any) -> tuple[int, int]:
    arr = np.asarray(x)
    return int(arr.min()), int(arr.max())


def _ends(values: Sequence[int]) -> tuple[int, int]:
    return min(values), max(values)


def _round_int(v: int, k: int) -> int:
    return v if k <= 0 else ((v + (1 << (k - 1))) >> k) << k


class RecordingExecutor(ClearExecutor):
    """The clear executor, recording every integer node the tracing executor creates."""

    name = "recording"

    def __init__(self) -> None:
        self.records: list[ValueRecord] = []
        self.op = _MODULE
        self._worst: dict[int, tuple[Any, int, int]] = {}
        self._record_of: dict[int, tuple[Any, ValueRecord]] = {}

    # -- bookkeeping ------------------------------------------------------------------------

    def set_worst(self, x: Any, lo: int, hi: int) -> None:
        """Declare the worst-case range of an array (module inputs)."""
        self._worst[id(x)] = (x, int(lo), int(hi))

    def worst(self, x: Any) -> tuple[int, int]:
        """Worst-case range of an operand: recorded, else its whole integer type."""
        hit = self._worst.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1], hit[2]
        return type_range(*_range(x))

    def value(self, label: str, x: Any, wc: tuple[int, int], **extra: Any) -> Any:
        """Record a computed value with its worst-case range and return it."""
        lo, hi = _range(x)
        self.records.append(ValueRecord(self.op, label, lo, hi, int(wc[0]), int(wc[1]), **extra))
        self._record_of[id(x)] = (x, self.records[-1])
        self.set_worst(x, min(lo, int(wc[0])), max(hi, int(wc[1])))
        return x

    def constant(self, c: Any) -> None:
        """Record a clear constant node."""
        lo, hi = _range(c)
        self.records.append(ValueRecord(self.op, "constant", lo, hi))

    # -- primitives -------------------------------------------------------------------------

    def matmul(self, a: Any, b: Any, z_w: Any = 0) -> Any:
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        alo, ahi = self.worst(a)
        self.constant(b)
        prod = a @ b
        plo, phi = ik.gemm_bounds(b, 0, alo, ahi, name=self.op)
        if z_w == 0:
            return self.value("accumulator", prod, (plo.min(), phi.max()))
        self.value("matmul", prod, (plo.min(), phi.max()))
        k = int(a.shape[-1])
        s = self.value("sum", np.sum(a, axis=-1, keepdims=True), (k * alo, k * ahi))
        self.constant(z_w)
        zs_ends = (int(z_w) * k * alo, int(z_w) * k * ahi)
        zs = self.value("zw_sum", int(z_w) * s, (min(zs_ends), max(zs_ends)))
        lo, hi = ik.gemm_bounds(b, z_w, alo, ahi, name=self.op)
        return self.value("accumulator", prod - zs, (lo.min(), hi.max()))

    def pad(self, x: Any, pads: Sequence[int], value: int) -> Any:
        if not any(int(p) for p in pads):
            return x
        xlo, xhi = self.worst(x)
        self.constant(0)  # fhe.zeros
        if value != 0:
            self.constant(value)
            self.value("pad_fill", np.array([value]), (value, value))
        out = super().pad(x, pads, value)
        return self.value("padded", out, (min(xlo, value), max(xhi, value)))

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
        x = np.asarray(x, dtype=np.int64)
        w = np.asarray(w, dtype=np.int64)
        xlo, xhi = self.worst(x)
        x_pad = self.pad(x, pads, pad_value)
        hw = tuple(int(d) for d in x.shape[2:])
        st = [int(s) for s in strides]
        pd = [int(p) for p in pads]

        def bounds(kernel: Any, zw: int) -> tuple[int, int]:
            lo, hi = ik.conv_bounds(
                kernel, zw, xlo, xhi, hw, int(pad_value), strides=st, pads=pd, name=self.op
            )
            return int(np.min(lo)), int(np.max(hi))

        self.constant(w)
        plain = super().conv(x_pad, w, strides=strides, pads=[0, 0, 0, 0], pad_value=0, group=group)
        if z_w == 0:
            return self.value("accumulator", plain, bounds(w, 0))
        self.value("conv", plain, bounds(w, 0))
        ones = np.ones_like(w)
        self.constant(ones)
        sums = super().conv(
            x_pad, ones, strides=strides, pads=[0, 0, 0, 0], pad_value=0, group=group
        )
        self.value("window_sums", sums, bounds(ones, 0))
        self.constant(z_w)
        slo, shi = bounds(ones, 0)
        ends = (int(z_w) * slo, int(z_w) * shi)
        zs = self.value("zw_sum", int(z_w) * sums, (min(ends), max(ends)))
        return self.value("accumulator", plain - zs, bounds(w, int(z_w)))

    def _padded_range(
        self, x: Any, pads: Sequence[int], pad_value: int, ceil_extra: tuple[int, int] = (0, 0)
    ) -> tuple[int, int]:
        """Record the pads the tracing executor makes; return the padded worst-case range."""
        lo, hi = self.worst(x)
        x_pad = self.pad(x, pads, pad_value)
        if any(int(p) for p in pads):
            lo, hi = min(lo, int(pad_value)), max(hi, int(pad_value))
        if any(ceil_extra):
            self.pad(x_pad, (0, 0, *ceil_extra), 0)
            lo, hi = min(lo, 0), max(hi, 0)
        return lo, hi

    def window_sum(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
        ceil_mode: int = 0,
    ) -> Any:
        extra = (0, 0)
        if ceil_mode:
            hw = (int(x.shape[-2]), int(x.shape[-1]))
            eh, ew = ik.ceil_mode_extension(hw, kernel_shape, strides, pads)
            extra = (int(eh), int(ew))
        lo, hi = self._padded_range(x, pads, pad_value, extra)
        n = int(np.prod([int(k) for k in kernel_shape]))
        self.constant(np.array([0, 1]))  # the identity kernel
        out = super().window_sum(x, kernel_shape, strides, pads, pad_value, ceil_mode)
        return self.value("window_sum", out, (n * lo, n * hi))

    def maxpool(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
    ) -> Any:
        wc = self._padded_range(x, pads, pad_value)
        out = super().maxpool(x, kernel_shape, strides, pads, pad_value)
        return self.value("maxpool", out, wc)

    def unfold(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
    ) -> Any:
        # Traced as a grouped conv with a one-hot kernel: record that conv's nodes.
        n_channels = int(np.shape(x)[1])
        kh, kw = (int(k) for k in kernel_shape)
        kernel = np.zeros((n_channels * kh * kw, 1, kh, kw), dtype=np.int64)
        for c in range(n_channels):
            for i in range(kh):
                for j in range(kw):
                    kernel[c * kh * kw + i * kw + j, 0, i, j] = 1
        self.conv(x, kernel, strides=strides, pads=pads, pad_value=pad_value, group=n_channels)
        return super().unfold(x, kernel_shape, strides, pads, pad_value)

    def round_bit_pattern(self, x: Any, lsbs_to_remove: int, exactness: Any = None) -> Any:
        k = int(lsbs_to_remove)
        if k <= 0:
            return x
        lo, hi = self.worst(x)
        xlo, xhi = _range(x)
        out = super().round_bit_pattern(x, k, exactness)
        return self.value(
            "rounded",
            out,
            (_round_int(lo, k), _round_int(hi, k)),
            lsbs_removed=k,
            pre_round_bits=ik.bit_width(xlo, xhi),
            pre_round_wc_bits=ik.bit_width(min(lo, xlo), max(hi, xhi)),
        )

    def tlu(self, x: Any, fn: Callable[[Any], Any]) -> Any:
        self._mark_tlu_input(x)
        out = fn(x)
        # A table's worst case is its output type: tables may differ per element.
        return self.value("tlu", out, type_range(*_range(out)))

    def copy(self, x: Any) -> Any:
        return self.tlu(np.asarray(x), _identity)

    def add(self, x: Any, y: Any) -> Any:
        (xlo, xhi), (ylo, yhi) = self.worst(x), self.worst(y)
        return self.value("add", super().add(x, y), (xlo + ylo, xhi + yhi))

    def subtract(self, x: Any, y: Any) -> Any:
        (xlo, xhi), (ylo, yhi) = self.worst(x), self.worst(y)
        return self.value("subtract", super().subtract(x, y), (xlo - yhi, xhi - ylo))

    def multiply(self, x: Any, y: Any) -> Any:
        (xlo, xhi), (ylo, yhi) = self.worst(x), self.worst(y)
        ends = (xlo * ylo, xlo * yhi, xhi * ylo, xhi * yhi)
        return self.value("multiply", super().multiply(x, y), _ends(ends))

    def add_constant(self, x: Any, c: Any) -> Any:
        lo, hi = self.worst(x)
        self.constant(c)
        clo, chi = _range(c)
        return self.value("add_constant", super().add_constant(x, c), (lo + clo, hi + chi))

    def multiply_constant(self, c: Any, x: Any) -> Any:
        lo, hi = self.worst(x)
        self.constant(c)
        clo, chi = _range(c)
        ends = (clo * lo, clo * hi, chi * lo, chi * hi)
        return self.value("multiply_constant", super().multiply_constant(c, x), _ends(ends))

    def sum(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        lo, hi = self.worst(x)
        n = int(np.shape(x)[axis])
        return self.value("sum", super().sum(x, axis, keepdims), (n * lo, n * hi))

    def _mark_tlu_input(self, x: Any) -> None:
        hit = self._record_of.get(id(x))
        if hit is not None and hit[0] is x:
            hit[1].feeds_tlu = True


def _identity(x: Any) -> Any:
    return x


class HintingExecutor(TracingExecutor):
    """The tracing executor, hinting each node with the recorded worst-case range.

    With no records it traces exactly like the tracing executor.
    """

    name = "hinting"

    def __init__(self, records: Sequence[ValueRecord] = ()) -> None:
        self._hints: dict[tuple[str, str, int], tuple[int, int]] = {}
        seen: dict[tuple[str, str], int] = {}
        for rec in records:
            if rec.wc_lo is None or rec.wc_hi is None:
                continue
            k = seen.get((rec.op, rec.label), 0)
            seen[(rec.op, rec.label)] = k + 1
            self._hints[(rec.op, rec.label, k)] = (
                min(rec.wc_lo, rec.lo),
                max(rec.wc_hi, rec.hi),
            )
        self._count: dict[tuple[str, str], int] = {}
        self.op = _MODULE

    def hint(self, label: str, x: Any) -> Any:
        """Hint the node x with the worst-case range recorded for it."""
        fhe = fhe_module()

        k = self._count.get((self.op, label), 0)
        self._count[(self.op, label)] = k + 1
        wc = self._hints.get((self.op, label, k))
        if wc is None:
            return x
        return fhe.hint(x, can_store=np.array(wc, dtype=np.int64))

    def pad(self, x: Any, pads: Sequence[int], value: int) -> Any:
        if not any(int(p) for p in pads):
            return x
        return self.hint("padded", super().pad(x, pads, value))

    def matmul(self, a: Any, b: Any, z_w: Any = 0) -> Any:
        prod = a @ b
        if z_w == 0:
            return self.hint("accumulator", prod)
        prod = self.hint("matmul", prod)
        s = self.hint("sum", np.sum(a, axis=-1, keepdims=True))
        zs = self.hint("zw_sum", int(z_w) * s)
        return self.hint("accumulator", prod - zs)

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
        st = tuple(int(s) for s in strides)
        w = np.asarray(w, dtype=np.int64)
        plain = fhe.conv(x_pad, w, strides=st, group=int(group))
        if z_w == 0:
            return self.hint("accumulator", plain)
        plain = self.hint("conv", plain)
        sums = self.hint(
            "window_sums", fhe.conv(x_pad, np.ones_like(w), strides=st, group=int(group))
        )
        zs = self.hint("zw_sum", int(z_w) * sums)
        return self.hint("accumulator", plain - zs)

    def window_sum(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
        ceil_mode: int = 0,
    ) -> Any:
        out = super().window_sum(x, kernel_shape, strides, pads, pad_value, ceil_mode)
        return self.hint("window_sum", out)

    def maxpool(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
    ) -> Any:
        return self.hint("maxpool", super().maxpool(x, kernel_shape, strides, pads, pad_value))

    def round_bit_pattern(self, x: Any, lsbs_to_remove: int, exactness: Any = None) -> Any:
        if int(lsbs_to_remove) <= 0:
            return x
        return self.hint("rounded", super().round_bit_pattern(x, lsbs_to_remove, exactness))

    def tlu(self, x: Any, fn: Callable[[Any], Any]) -> Any:
        return self.hint("tlu", super().tlu(x, fn))

    def add(self, x: Any, y: Any) -> Any:
        return self.hint("add", super().add(x, y))

    def subtract(self, x: Any, y: Any) -> Any:
        return self.hint("subtract", super().subtract(x, y))

    def multiply(self, x: Any, y: Any) -> Any:
        return self.hint("multiply", super().multiply(x, y))

    def add_constant(self, x: Any, c: Any) -> Any:
        return self.hint("add_constant", super().add_constant(x, c))

    def multiply_constant(self, c: Any, x: Any) -> Any:
        return self.hint("multiply_constant", super().multiply_constant(c, x))

    def sum(self, x: Any, axis: int, keepdims: bool = False) -> Any:
        return self.hint("sum", super().sum(x, axis, keepdims))


@contextlib.contextmanager
def op_scope(
    ops: Sequence[tuple[str, Any]], executor: Any, outputs: dict[str, Any] | None = None
) -> Iterator[None]:
    """Force ``executor`` and wrap each op's q_impl so that ``executor.op`` names it.

    Args:
        ops: (name, op) pairs.
        executor: the executor to force; its ``op`` attribute is set around each q_impl.
        outputs: if given, filled with op name -> the op's last result.

    Yields:
        None.
    """
    patched = []
    for name, op in ops:
        original = op.q_impl

        def wrapped(*args: Any, _orig: Any = original, _name: str = name, **kwargs: Any) -> Any:
            previous = executor.op
            executor.op = _name
            try:
                result = _orig(*args, **kwargs)
            finally:
                executor.op = previous
            if outputs is not None:
                outputs[_name] = result
            return result

        op.q_impl = wrapped
        patched.append(op)
    try:
        with use_executor(executor):
            yield
    finally:
        for op in patched:
            del op.q_impl
