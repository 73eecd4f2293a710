"""The one executor of the quantized ops' integer math.

Each op writes its integer math once, against :class:`Executor`; float rescaling and
quantization are plain numpy operators, which concrete-python traces and fuses into table
lookups by itself. Each integer primitive below is written ONCE, as a composition of
backend leaves (:mod:`~fhequant.quantized.exec.backends`), and names every integer node it
creates once, with ``self.node(label, value, bounds=rule)``: the worst-case interval rule of
the node sits next to it. An ``Executor(backend, observer)`` is then:

* :data:`CLEAR` = ``Executor(ClearBackend())``: calibration and ``fhe="disable"``; with no
  observer, the primitives call the backend's fused Rust kernels (no node is visible);
* :data:`TRACING` = ``Executor(TracingBackend())``: what ``concrete.fhe.Compiler`` traces;
* ``Executor(ClearBackend(), RecordingObserver())``: the bit-width report (``fhequant.fhe``);
* ``Executor(TracingBackend(), HintingObserver(records))``: the worst-case compile;
* ``Executor(ClearBackend(), RoundingRangeObserver(op))``: streamed rounding calibration.

Observers see nodes and never compute, so recording and hinting cannot drift from what is
traced. ``executor_for(*arrays)`` picks TRACING when an operand is a concrete Tracer, unless
``use_executor`` forced one; the op a node belongs to is context (``run_op``), never an
attribute patched on the op.

Spatial primitives take NCHW tensors and ONNX pads [h_begin, w_begin, h_end, w_end], filled
with ``pad_value`` (the input zero point).

How to add an executor primitive
    Write one method on :class:`Executor`. Compose it from the backend leaves and numpy
    operators (they work on arrays and Tracers alike), pass every operand that may be a
    module input through ``self.backend.operand``, announce clear constants with
    ``self.constant(c)`` and wrap every integer value the traced graph will hold in
    ``self.node("label", value, bounds=lambda worst: (lo, hi))``, where ``worst(x)`` is
    the worst-case range of an operand. If a backend cannot express a step with numpy
    operators, add one leaf to *each* backend (never node logic there, and never a
    primitive's name: tests check the backends against :data:`PRIMITIVES`); if clear speed
    needs it, add a ``fused_*`` leaf to ClearBackend and call it under ``self._direct``.
    Nothing changes in ``fhequant.fhe``: recording and hinting follow the nodes. Then add
    an ``OpCase`` (tests/_support/quantized_op_cases.py) for the op using it: the executor tests
    check clear == tracing and the node sequences per op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fhequant import kernels as ik
from fhequant.quantized.exec.backends import ClearBackend, TracingBackend, is_tracer
from fhequant.quantized.exec.context import current_op, forced_executor
from fhequant.quantized.exec.observers import Bounds, Observer, observed_range, type_range

__all__ = ["CLEAR", "PRIMITIVES", "TRACING", "Executor", "executor_for"]

#: The integer primitives of the executor (add a new one here; backends define none of them).
PRIMITIVES = (
    "matmul",
    "matmul_rescale",
    "conv",
    "conv_rescale",
    "window_sum",
    "maxpool",
    "unfold",
    "pad",
    "round_bit_pattern",
    "tlu",
    "float_function",
    "copy",
    "add",
    "subtract",
    "multiply",
    "add_constant",
    "multiply_constant",
    "sum",
)


def _pads4(pads: Sequence[int]) -> tuple[int, int, int, int]:
    hb, wb, he, we = (int(p) for p in pads)
    return hb, wb, he, we


def _ends(*values: int) -> tuple[int, int]:
    return min(values), max(values)


def _span(bounds: tuple[Any, Any]) -> tuple[int, int]:
    """(min of the lower bounds, max of the upper bounds) of per-output-channel bounds."""
    lo, hi = bounds
    return int(np.min(lo)), int(np.max(hi))


def _round_int(v: int, k: int) -> int:
    return v if k <= 0 else ((v + (1 << (k - 1))) >> k) << k


def _identity(x: Any) -> Any:
    return x


def _unfold_kernel(n_channels: int, kernel_shape: Sequence[int]) -> Any:
    """(C·kh·kw, 1, kh, kw): output channel c·kh·kw + i·kw + j picks cell (i, j) of channel c."""
    kh, kw = (int(k) for k in kernel_shape)
    kernel = np.zeros((n_channels * kh * kw, 1, kh, kw), dtype=np.int64)
    for c in range(n_channels):
        for i in range(kh):
            for j in range(kw):
                kernel[c * kh * kw + i * kw + j, 0, i, j] = 1
    return kernel


class Executor:
    """The integer primitives the quantized ops are written against (int64 in, int64 out).

    Args:
        backend: ClearBackend or TracingBackend (the leaves).
        observer: None, or an observer of the nodes (RecordingObserver, HintingObserver,
            RoundingRangeObserver).

    ``name`` is the backend's ("clear", "tracing"), or the observer's when there is one
    ("recording", "hinting", "rounding"). Whatever the observer, an op's float path goes
    through :meth:`float_function` (one generic node when traced).
    """

    def __init__(
        self, backend: Any, observer: Observer | None = None, *, quantize_outputs: bool = False
    ) -> None:
        self.backend = backend
        self.observer = observer
        self.name: str = backend.name if observer is None else observer.name
        self._nodes = observer if observer is not None and observer.nodes else None
        # the clear backend with nothing watching the nodes: fused kernels, free copies
        self._direct = bool(backend.fused) and self._nodes is None
        #: a hidden Gemm/Conv may quantize its output in its fused kernel (only the integers
        #: are read: the calibration walk's output passes)
        self.quantizes_outputs = quantize_outputs and self._direct

    def __repr__(self) -> str:
        return f"Executor({type(self.backend).__name__}, {type(self.observer).__name__})"

    @property
    def observes_rounding(self) -> bool:
        """Whether an observer watches the rounding points of mixing ops."""
        return self.observer is not None and self.observer.rounding_points

    # -- what observers see -----------------------------------------------------------------

    def node(self, label: str, value: Any, bounds: Bounds, **facts: Any) -> Any:
        """Name one integer node of the traced graph; returns the value to use for it.

        Args:
            label: what the node is (accumulator, rounded, tlu, ...).
            value: the node's value (array or Tracer).
            bounds: its worst-case interval rule, ``bounds(worst) -> (lo, hi)``.
            **facts: ``rounded=(source, lsbs)`` or ``tlu_input=x`` for the report.
        """
        if self._nodes is None:
            return value
        return self._nodes.node(current_op(), label, value, bounds, **facts)

    def constant(self, value: Any) -> None:
        """Name a clear constant node."""
        if self._nodes is not None:
            self._nodes.constant(current_op(), value)

    def rounding_point(self, op: Any, rounding_id: str, value: Any) -> None:
        """Announce the accumulator ``rounding_id`` of ``op`` before it is rounded."""
        if self.observer is not None and self.observer.rounding_points:
            self.observer.rounding_point(op, rounding_id, value)

    # -- linear algebra ---------------------------------------------------------------------

    def matmul(self, a: Any, b: Any, z_w: Any = 0) -> Any:
        """a @ b - z_w·Σ_k a[..., k] (keepdims): the zp-corrected integer matmul."""
        if self._direct:
            return self.backend.fused_matmul(a, b, z_w)
        a, b = self.backend.operand(a), self.backend.operand(b)
        op = current_op()
        self.constant(b)
        prod = a @ b

        def product(zw: Any) -> Bounds:
            return lambda worst: _span(ik.gemm_bounds(b, zw, *worst(a), name=op))

        if z_w == 0:
            return self.node("accumulator", prod, bounds=product(0))
        prod = self.node("matmul", prod, bounds=product(0))
        k = int(a.shape[-1])
        s = self.node(
            "sum",
            np.sum(a, axis=-1, keepdims=True),
            bounds=lambda worst: (k * worst(a)[0], k * worst(a)[1]),
        )
        self.constant(z_w)
        zw = int(z_w)
        zs = self.node(
            "zw_sum", zw * s, bounds=lambda worst: _ends(zw * k * worst(a)[0], zw * k * worst(a)[1])
        )
        return self.node("accumulator", prod - zs, bounds=product(z_w))

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
        removes ``lsbs`` bits: a hidden Gemm up to its output quantization
        (docs/contract.md §3.1)."""
        if self._direct:
            return self.backend.fused_matmul_rescale(a, b, z_w, lsbs, offset, sub, mul, add)
        acc = self.round_bit_pattern(self.matmul(a, b, z_w), lsbs, exactness)
        return ik.float64_rescale(acc, offset, sub, mul, add)

    def matmul_rescale_quant(
        self, a: Any, b: Any, z_w: Any, lsbs: int, rescale: tuple[Any, ...], quant: Any
    ) -> Any:
        """:meth:`matmul_rescale` quantized by the output quantizer ``quant`` (scale,
        zero_point, lo, hi) in one fused kernel: (int8/int16 integers, min, max), or None
        when this executor does not quantize outputs or the fused kernel does not apply."""
        if not self.quantizes_outputs:
            return None
        return self.backend.fused_matmul_rescale_quant(a, b, z_w, lsbs, rescale, quant)

    def accumulator_rescale_quant(
        self, acc: Any, lsbs: int, rescale: tuple[Any, ...], quant: Any
    ) -> Any:
        """:meth:`matmul_rescale_quant` of a product already computed: ``acc`` is the int32
        ``a @ (b - z_w)`` of the integers the op reads (same result, or None likewise)."""
        if not self.quantizes_outputs:
            return None
        return self.backend.fused_accumulator_rescale_quant(acc, lsbs, rescale, quant)

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
        if self._direct:
            geometry = {
                "strides": strides, "pads": pads, "pad_value": pad_value, "group": group,
                "z_w": z_w,
            }  # fmt: skip
            return self.backend.fused_conv(x, w, geometry)
        x, w = self.backend.operand(x), np.asarray(w, dtype=np.int64)
        op = current_op()
        hw = tuple(int(d) for d in x.shape[2:])
        st, pd = [int(s) for s in strides], [int(p) for p in pads]
        x_pad = self.pad(x, pads, pad_value)

        def conv_of(kernel: Any, zw: int) -> Bounds:
            return lambda worst: _span(
                ik.conv_bounds(
                    kernel, zw, *worst(x), hw, int(pad_value), strides=st, pads=pd, name=op
                )
            )

        self.constant(w)
        plain = self.backend.conv_padded(x_pad, w, strides, group)
        if z_w == 0:
            return self.node("accumulator", plain, bounds=conv_of(w, 0))
        plain = self.node("conv", plain, bounds=conv_of(w, 0))
        ones = np.ones_like(w)
        self.constant(ones)
        sums = self.node(
            "window_sums",
            self.backend.conv_padded(x_pad, ones, strides, group),
            bounds=conv_of(ones, 0),
        )
        self.constant(z_w)
        zw = int(z_w)

        def zw_sums(worst: Callable[[Any], tuple[int, int]]) -> tuple[int, int]:
            slo, shi = conv_of(ones, 0)(worst)
            return _ends(zw * slo, zw * shi)

        zs = self.node("zw_sum", zw * sums, bounds=zw_sums)
        return self.node("accumulator", plain - zs, bounds=conv_of(w, zw))

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
        removes ``lsbs`` bits: a hidden Conv up to its output quantization
        (docs/contract.md §3.2)."""
        geometry: dict[str, Any] = {
            "strides": strides, "pads": pads, "pad_value": pad_value, "group": group,
        }  # fmt: skip
        if self._direct:
            return self.backend.fused_conv_rescale(
                x, w, {**geometry, "z_w": z_w}, lsbs, (offset, sub, mul, add)
            )
        acc = self.conv(x, w, **geometry, z_w=z_w)
        acc = self.round_bit_pattern(acc, lsbs, exactness)
        return ik.float64_rescale(acc, offset, sub, mul, add)

    def conv_rescale_quant(
        self,
        x: Any,
        w: Any,
        conv: dict[str, Any],
        lsbs: int,
        rescale: tuple[Any, ...],
        quant: Any,
    ) -> Any:
        """:meth:`conv_rescale` quantized by ``quant`` (``conv``: the geometry keywords and
        ``z_w``), as :meth:`matmul_rescale_quant`."""
        if not self.quantizes_outputs:
            return None
        return self.backend.fused_conv_rescale_quant(x, w, conv, lsbs, rescale, quant)

    # -- spatial ----------------------------------------------------------------------------

    def pad(self, x: Any, pads: Sequence[int], value: int) -> Any:
        """Pad the last two axes; pads = [h_begin, w_begin, h_end, w_end]."""
        hb, wb, he, we = _pads4(pads)
        if hb == wb == he == we == 0:
            return x
        if self._direct:
            return self.backend.fused_pad(x, pads, value)
        shape = tuple(int(d) for d in x.shape)
        h, w = shape[-2], shape[-1]
        self.constant(0)  # the zeros of the frame
        if value != 0:
            self.constant(value)
        out = self.backend.frame(x, (*shape[:-2], h + hb + he, w + wb + we), int(value))
        if value != 0:
            out = self.node("pad_fill", out, bounds=lambda worst: (value, value))
        out[(slice(None),) * (len(shape) - 2) + (slice(hb, hb + h), slice(wb, wb + w))] = x
        return self.node(
            "padded", out, bounds=lambda worst: _ends(worst(x)[0], worst(x)[1], int(value))
        )

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
        if self._direct:
            return self.backend.fused_window_sum(
                x, kernel_shape, strides, pads, pad_value, ceil_mode
            )
        h, w = int(x.shape[-2]), int(x.shape[-1])
        x_pad = self.pad(x, pads, pad_value)
        fills = [int(pad_value)] if any(int(p) for p in pads) else []
        if ceil_mode:
            eh, ew = (int(e) for e in ik.ceil_mode_extension((h, w), kernel_shape, strides, pads))
            if eh or ew:
                x_pad = self.pad(x_pad, (0, 0, eh, ew), 0)
                fills.append(0)
        n = int(np.prod([int(k) for k in kernel_shape]))
        self.constant(np.array([0, 1]))  # the identity kernel's values
        out = self.backend.sum_windows(x_pad, kernel_shape, strides)

        def sums(worst: Callable[[Any], tuple[int, int]]) -> tuple[int, int]:
            lo, hi = _ends(*worst(x), *fills)
            return n * lo, n * hi

        return self.node("window_sum", out, bounds=sums)

    def maxpool(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
        *,
        dilations: Sequence[int] = (1, 1),
        ceil_extension: Sequence[int] = (0, 0),
        extension_value: int = 0,
    ) -> Any:
        """Per-channel window maxima (windows dilated by ``dilations``); ``ceil_extension``
        (rows, columns) more cells filled with ``extension_value`` end the padded input (the
        ceil_mode extension, filled with a value that never wins)."""
        dil = tuple(int(v) for v in dilations)
        eh, ew = (int(e) for e in ceil_extension)
        if self._direct and dil == (1, 1) and eh == ew == 0:
            return self.backend.fused_maxpool(x, kernel_shape, strides, pads, pad_value)
        x_pad = self.pad(x, pads, pad_value)
        fills = [int(pad_value)] if any(int(p) for p in pads) else []
        if eh or ew:
            x_pad = self.pad(x_pad, (0, 0, eh, ew), int(extension_value))
            fills.append(int(extension_value))
        out = self.backend.max_windows(x_pad, kernel_shape, strides, dil)
        return self.node("maxpool", out, bounds=lambda worst: _ends(*worst(x), *fills))

    def unfold(
        self,
        x: Any,
        kernel_shape: Sequence[int],
        strides: Sequence[int],
        pads: Sequence[int],
        pad_value: int,
    ) -> Any:
        """Sliding blocks (N, C·kh·kw, L) in torch column order: a grouped conv with a
        one-hot kernel."""
        if self._direct:
            return self.backend.fused_unfold(x, kernel_shape, strides, pads, pad_value)
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

    # -- rounding and tables ----------------------------------------------------------------

    def round_bit_pattern(self, x: Any, lsbs_to_remove: int, exactness: Any = None) -> Any:
        """floor((x + 2^(k-1)) / 2^k)·2^k: round the k low bits, ties up."""
        k = int(lsbs_to_remove)
        if k <= 0:
            return x
        out = self.backend.round_bits(x, k, exactness)
        return self.node(
            "rounded",
            out,
            bounds=lambda worst: (_round_int(worst(x)[0], k), _round_int(worst(x)[1], k)),
            rounded=(x, k),
        )

    def tlu(self, x: Any, fn: Callable[[Any], Any]) -> Any:
        """A table lookup: fn applied to every element of an integer tensor."""
        out = self.backend.lookup(x, fn)
        # a table's worst case is its output type: tables may differ per element
        return self.node(
            "tlu", out, bounds=lambda worst: type_range(*observed_range(out)), tlu_input=x
        )

    def float_function(self, fn: Callable[..., Any], *operands: Any) -> Any:
        """``fn(*operands)``: a float function of encrypted values (an op's float path).

        Traced, the encrypted operands (Tracers) go through ONE generic node (the backend's
        ``apply_float`` leaf), so concrete never sees the numpy functions inside ``fn``;
        the float result is no integer node: concrete fuses it, with the dequantization
        before it and the quantization after it, into one table lookup. ``fn`` must map
        each element on its own and keep the shape of its encrypted operands.
        """
        return self.backend.apply_float(fn, operands)

    def copy(self, x: Any) -> Any:
        """An identity table lookup (resets the bit width of a value in the circuit)."""
        if self._direct:
            return x
        return self.tlu(x, _identity)

    # -- plain integer arithmetic -----------------------------------------------------------
    # numpy operators on arrays and Tracers alike; the ops call these (instead of the
    # operators) where the value is a node of the traced graph.

    def add(self, x: Any, y: Any) -> Any:
        """x + y, both encrypted."""
        return self.node(
            "add",
            x + y,
            bounds=lambda worst: (worst(x)[0] + worst(y)[0], worst(x)[1] + worst(y)[1]),
        )

    def subtract(self, x: Any, y: Any) -> Any:
        """x - y, both encrypted."""
        return self.node(
            "subtract",
            x - y,
            bounds=lambda worst: (worst(x)[0] - worst(y)[1], worst(x)[1] - worst(y)[0]),
        )

    def multiply(self, x: Any, y: Any) -> Any:
        """x · y, both encrypted."""

        def product(worst: Callable[[Any], tuple[int, int]]) -> tuple[int, int]:
            (xlo, xhi), (ylo, yhi) = worst(x), worst(y)
            return _ends(xlo * ylo, xlo * yhi, xhi * ylo, xhi * yhi)

        return self.node("multiply", x * y, bounds=product, product_of=(x, y))

    def add_constant(self, x: Any, c: Any) -> Any:
        """x + c with a clear integer constant c."""
        self.constant(c)

        def shifted(worst: Callable[[Any], tuple[int, int]]) -> tuple[int, int]:
            (lo, hi), (clo, chi) = worst(x), observed_range(c)
            return lo + clo, hi + chi

        return self.node("add_constant", x + c, bounds=shifted)

    def multiply_constant(self, c: Any, x: Any) -> Any:
        """c · x with a clear integer constant c."""
        self.constant(c)

        def scaled(worst: Callable[[Any], tuple[int, int]]) -> tuple[int, int]:
            (lo, hi), (clo, chi) = worst(x), observed_range(c)
            return _ends(clo * lo, clo * hi, chi * lo, chi * hi)

        return self.node("multiply_constant", c * x, bounds=scaled)

    def sum(self, x: Any, axis: int | Sequence[int], keepdims: bool = False) -> Any:
        """Σ over one axis, or over several (a tuple of axes)."""
        axes = (int(axis),) if isinstance(axis, (int, np.integer)) else tuple(int(a) for a in axis)

        def sums(worst: Callable[[Any], tuple[int, int]]) -> tuple[int, int]:
            n = int(np.prod([int(np.shape(x)[a]) for a in axes]))
            return n * worst(x)[0], n * worst(x)[1]

        summed = np.sum(x, axis=axes[0] if len(axes) == 1 else axes, keepdims=keepdims)
        return self.node("sum", summed, bounds=sums)


CLEAR = Executor(ClearBackend())
TRACING = Executor(TracingBackend())


def executor_for(*arrays: Any) -> Executor:
    """The forced executor, else TRACING if an operand is a Tracer, else CLEAR."""
    forced = forced_executor()
    if forced is not None:
        return forced
    if any(is_tracer(a) for a in arrays):
        return TRACING
    return CLEAR
