"""Fused statistics pass of Gemm / MatMul / Conv calibration (docs/contract.md §4.2, decision 4).

In PTQ the statistics pass of a Gemm, MatMul or Conv only keeps the min and max of the op's
float result. :func:`fused_statistics` gets them from the native extremes kernels
(``_core.matmul_extremes_f32/_f64``, ``_core.conv2d_extremes_f64``), which run the same
sequential sums as the split-independent float implementations of
:mod:`fhequant.quantized.float_impls`, add the bias in the result dtype as numpy's ``y + c``
does and reduce in registers: neither the float output nor, for stored integer blocks, the
dequantized input is materialised. The numbers are the ones of the materialised path bit for bit:

* the result dtype is numpy's (float32 only for float32 input, weights and bias);
* a block whose result holds a NaN or an infinity, or whose min or max is a zero (numpy's pick
  between -0.0 and +0.0 depends on positions), is evaluated by the materialised path, which
  then reports or resolves it exactly as before;
* anything the kernels do not cover (other layouts, dtypes, attributes, broadcasts) returns
  None and the caller runs its usual pass.

The kernels filter first (a float32 approximation with a rigorous error bound) and run the
exact sums only where an extreme can be, with the same results (docs/calibration-throughput.md);
set :data:`EXACT_EXTREMES` to True to run the exact sums everywhere (tests and benches compare
both), and :data:`ENABLED` to False to always take the materialised path.

**Kept products.** The output pass of a hidden Gemm/MatMul computes the exact integer product
``a @ (b - z_w)`` of the same stored integers. When the caller passes :class:`Products`, a block
of stored integers goes to ``_core.int_matmul_acc_extremes`` instead, which computes that
product once, filters the float extremes with it (in place of the float32 product) and returns
it; the pass keeps it (int32) for the output pass, within the products' byte budget (past
it, the product still serves as the filter and is dropped). The extremes are the same bits
either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from fhequant import _core
from fhequant.errors import FhequantError
from fhequant.kernels import quant as _kernels
from fhequant.kernels.limits import check_window_geometry
from fhequant.onnx.ops._spatial import per_axis, resolve_pads
from fhequant.quantization import QuantizedArray, UniformQuantizer
from fhequant.quantized.exec import routed_float_impl
from fhequant.quantized.finite import check_finite
from fhequant.quantized.float_impls import _native_conv_fits

__all__ = [
    "ENABLED",
    "EXACT_EXTREMES",
    "INTEGER_FILTER",
    "SERVES_STATISTICS",
    "BlockSource",
    "Extremes",
    "Products",
    "dequant_pair",
    "fused_statistics",
    "reads_stored",
]

#: Use the fused kernels when they apply (tests compare both paths).
ENABLED = True
#: Skip the kernels' filter and run every exact sum (same results; for tests and benches).
EXACT_EXTREMES = False
#: A Gemm/MatMul that reads stored integers (int8/16/32 with a scalar scale and zero point)
#: through quantized constant weights filters its float extremes with its exact integer
#: product (``_core.int_matmul_acc_extremes``) instead of the float GEMM filter; the product
#: is dropped unless ``products`` keeps it. Same extremes, bit for bit; set to False to use
#: the float filter (the seventh round of docs/calibration-throughput.md compares them).
INTEGER_FILTER = True
#: Survivors per row (values the integer estimate could not rule out, each summed again in
#: float64) above which a block tells the integer filter to leave the op's next blocks to
#: the float filter: coarse weights make the estimate loose (on the benchmark CNN's last
#: Gemm, 5-bit weights, 0.6 per row and 1.7x the float filter's time; on the MLP's Gemms,
#: 6-bit weights, 0.01-0.1 per row and 0.8-0.9x).
LOOSE_SURVIVORS = 0.25
#: The calibration statistics this pass computes (the extremes kernels reduce to min/max).
SERVES_STATISTICS: tuple[str, ...] = ("minmax",)

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_FLOATS = (_F32, _F64)
_NARROW = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32))


class BlockSource(Protocol):
    """What the fused pass reads from the calibration walk (its tensor store)."""

    def blocks(self, what: str) -> Iterator[int]:
        """The block indices of one pass over all rows (``what`` names the pass)."""
        ...

    def float_block(self, name: str, b: int) -> Any:
        """The float values of tensor ``name`` in block ``b``."""
        ...

    def narrow_stored_block(self, name: str, b: int) -> tuple[np.ndarray, UniformQuantizer] | None:
        """Block ``b`` of a quantized tensor as stored in int8/16/32, with its quantizer, when
        the native dequantize reads it as it is; None otherwise."""
        ...


@dataclass
class Products:
    """The int32 products ``a @ (b - z_w)`` of one op's blocks, kept by its statistics pass
    for its output pass (by block index), at most ``budget`` bytes of them."""

    budget: int
    blocks: dict[int, np.ndarray] = field(default_factory=dict)
    used: int = 0

    def fits(self, nbytes: int) -> bool:
        """Whether a product of ``nbytes`` bytes may be kept."""
        return self.used + nbytes <= self.budget

    def keep(self, b: int, acc: np.ndarray) -> None:
        """Keep the product of block ``b``."""
        self.blocks[b] = acc
        self.used += acc.nbytes

    def take(self, b: int) -> np.ndarray | None:
        """The product of block ``b`` (forgotten here), or None when it was not kept."""
        acc = self.blocks.pop(b, None)
        if acc is not None:
            self.used -= acc.nbytes
        return acc


class _Variable:
    """Stands for the variable input when asking the op for its constant inputs."""


@dataclass
class _Plan:
    """What the kernels need besides the input block."""

    kind: str  # "matmul" or "conv"
    weight: np.ndarray  # (k, m) as given, or (O, C/g, KH, KW) float64
    bias: np.ndarray | None  # 1-D, as given (matmul) or float64 (conv)
    attrs: dict[str, Any]
    weight64: np.ndarray | None = None  # float64 copies for the float64 matmul kernel
    bias64: np.ndarray | None = None
    integers: tuple[np.ndarray, int] | None = None  # (K, N) int64 weights and z_w (matmul)

    def __post_init__(self) -> None:
        if self.kind == "matmul":
            self.weight64 = np.ascontiguousarray(self.weight, dtype=np.float64)
            if self.bias is not None:
                self.bias64 = np.ascontiguousarray(self.bias, dtype=np.float64)


def fused_statistics(
    cal: BlockSource,
    op: Any,
    variable: list[str],
    out: str,
    products: Products | None = None,
) -> np.ndarray | None:
    """The global ``[min, max]`` of the op's float result over all blocks, or None.

    Only for results used by their min and max alone (the caller checks PTQ and not
    ``raw_output``) of an op whose class declares ``fused_extremes``, by its layout: a Gemm
    (alpha 1, beta 0 or 1, transA 0, bias broadcast on the last axis), MatMul (2-D constant
    right operand) or 1-D/2-D Conv (bias per channel) whose only variable input is the first
    one, evaluated by the split-independent float implementation.

    Args:
        cal: the blocks of the walk (its tensor store).
        op: the quantized op (its ``call_impl`` routed by ``use_split_independent_impl``
            in this context).
        variable: the names of its variable inputs.
        out: its output tensor name (for error messages).
        products: where to keep the integer products of a Gemm/MatMul whose constant weights
            are quantized (the caller guarantees that its output pass reads the stored
            integers of the input as they are); None keeps nothing.

    Returns:
        ``np.array([min, max], dtype)`` exactly as the materialised pass would build it, or
        None when the fused kernels do not apply.

    Raises:
        NonFiniteError: the result holds NaN or infinite values (the materialised pass's
            message).
    """
    extremes = Extremes.of(op, variable, out, products)
    if extremes is None:
        return None
    name = variable[0]
    for b in cal.blocks(f"{op.op_instance_name} statistics"):
        x, dequant = _block_input(cal, name, b)
        extremes.add(x, dequant, b, partial(cal.float_block, name, b))
    return extremes.result()


class Extremes:
    """The running ``[min, max]`` of one op's float result, one block at a time (what
    :func:`fused_statistics` reduces; the walk also feeds it the graph inputs as they load).

    Build it with :meth:`of`; every :meth:`add` must run where :meth:`of` did, in the
    ``use_split_independent_impl(op)`` context.
    """

    def __init__(self, op: Any, out: str, plan: _Plan, products: Products | None) -> None:
        self.op = op
        self.out = out
        self.plan = plan
        self.products = products
        self.where = f"op {op.op_instance_name!r} ({type(op).__name__})"
        self.lo: Any = None
        self.hi: Any = None
        self.dtype: Any = None

    @classmethod
    def of(
        cls, op: Any, variable: list[str], out: str, products: Products | None = None
    ) -> Extremes | None:
        """The accumulator of ``op`` (arguments as :func:`fused_statistics`), or None when
        the fused kernels do not apply."""
        if not ENABLED or len(variable) != 1 or routed_float_impl(op) is None:
            return None
        if getattr(type(op), "fused_extremes", None) is None:
            return None
        plan = _plan(op, products is not None or INTEGER_FILTER)
        if plan is None:
            return None
        return cls(op, out, plan, products)

    def add(
        self,
        x: np.ndarray,
        dequant: tuple[float, float] | None,
        b: int,
        float_block: Callable[[], np.ndarray],
    ) -> None:
        """Take block ``b``: ``x`` as :func:`_block_input` reads it, ``float_block()`` its
        float values (read only when the block is materialised).

        Raises:
            NonFiniteError: the block's result holds NaN or infinite values.
        """
        found = _block_extremes(self.plan, x, dequant, b, self.products)
        if found is None:
            arr = _materialised(self.op, float_block())
            if arr.size == 0:
                return
            blo, bhi, bdtype = arr.min(), arr.max(), arr.dtype
        else:
            blo, bhi, bdtype = found
        check_finite(blo, bhi, self.out, self.where)
        self.merge(blo, bhi, bdtype)

    def merge(self, lo: Any, hi: Any, dtype: Any) -> None:
        """Take the finite extremes ``lo``, ``hi`` (of ``dtype``) of more blocks."""
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
        self.dtype = dtype

    def result(self) -> np.ndarray:
        """``np.array([min, max], dtype)`` over the blocks taken so far."""
        return np.array([self.lo, self.hi], dtype=self.dtype)


def _materialised(op: Any, block: np.ndarray) -> np.ndarray:
    """The op's float result on ``block``, as the materialised statistics pass computes it."""
    prepared = op._prepare_inputs_with_constants(
        block, calibrate=True, quantize_actual_values=False
    )
    return np.asarray(op.call_impl(*prepared, **op.attrs))


def _block_extremes(
    plan: _Plan,
    x: np.ndarray,
    dequant: tuple[float, float] | None,
    b: int,
    products: Products | None,
) -> tuple[Any, Any, Any] | None:
    """(min, max, dtype) of block ``b`` (``x`` as :func:`_block_input` reads it) from the
    kernels, or None to materialise it."""
    dtype = _result_dtype(plan, x, dequant)
    if dtype is None:
        return None
    try:
        if plan.kind == "conv":
            found = _conv_extremes(plan, x, dequant)
        elif _integer_filtered(plan, x, dequant):
            assert dequant is not None
            found = _matmul_products(plan, x, dequant, products, b)
        else:
            found = _matmul_extremes(plan, x, dequant)
    except (FhequantError, ValueError, TypeError):
        return None  # the materialised path reports what is wrong
    if found is None:
        return None
    lo, hi, finite = found
    if not finite or lo == 0 or hi == 0:
        return None
    return dtype.type(lo), dtype.type(hi), dtype


def _block_input(
    cal: BlockSource, name: str, b: int
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The stored integers with their (scale, zero_point) when the materialised pass would
    dequantize them with the native kernel, else the float block it would read."""
    narrow = cal.narrow_stored_block(name, b)
    if narrow is not None:
        stored, q = narrow
        if reads_stored(stored):
            return stored, dequant_pair(q)
    return np.asarray(cal.float_block(name, b)), None


def reads_stored(stored: np.ndarray) -> bool:
    """Whether the kernels read a block of stored integers as it is (int8/16/32, native,
    non-empty): they then dequantize it themselves with :func:`dequant_pair`."""
    return _kernels._native(stored, _NARROW)


def dequant_pair(q: Any) -> tuple[float, float]:
    """The float64 (scale, zero point) the kernels dequantize the stored integers of
    quantizer ``q`` with."""
    return (
        float(np.asarray(q.scale).astype(np.float64)),
        float(np.asarray(q.zero_point).astype(np.float64)),
    )


def _result_dtype(plan: _Plan, x: np.ndarray, dequant: Any) -> np.dtype[Any] | None:
    """The result dtype for this input, or None when the kernels do not take it."""
    if dequant is None and x.dtype not in _FLOATS:
        return None
    x_dtype = _F64 if dequant is not None else x.dtype
    if plan.kind == "conv":
        return _F64
    product = _F32 if x_dtype == _F32 and plan.weight.dtype == _F32 else _F64
    if product == _F32 and plan.bias is not None and plan.bias.dtype != _F32:
        return None  # float32 sums widened to float64 for the bias: not a kernel of ours
    return product


def _plan(op: Any, with_integers: bool = False) -> _Plan | None:
    """The constant operands of the op in the kernels' layout (with the integer weights of
    its product when ``with_integers`` and they apply), or None."""
    try:
        prepared = op._prepare_inputs_with_constants(
            _Variable(), calibrate=True, quantize_actual_values=False
        )
    except (FhequantError, ValueError, TypeError):
        return None
    if not prepared or not isinstance(prepared[0], _Variable):
        return None
    kind = type(op).fused_extremes
    attrs = dict(op.attrs)
    weight = prepared[1] if len(prepared) > 1 else None
    bias = prepared[2] if len(prepared) > 2 else None
    if not isinstance(weight, np.ndarray) or weight.dtype not in _FLOATS:
        return None
    if kind == "conv":
        return _conv_plan(weight, bias, attrs)
    if kind == "gemm":
        if attrs.get("alpha", 1) != 1 or attrs.get("transA", 0):
            return None
        beta = attrs.get("beta", 1)
        if beta not in (0, 1):
            return None
        if weight.ndim != 2:
            return None
        if attrs.get("transB", 0):
            weight = weight.T
        plan = _matmul_plan(weight, bias if beta != 0 else None, attrs)
    elif kind == "matmul":
        if len(prepared) != 2 or weight.ndim != 2:
            return None
        plan = _matmul_plan(weight, None, attrs)
    else:
        plan = None
    if plan is not None and with_integers:
        plan.integers = _integer_weights(op, attrs, weight.shape)
    return plan


def _integer_weights(
    op: Any, attrs: dict[str, Any], shape: tuple[int, ...]
) -> tuple[np.ndarray, int] | None:
    """The op's (K, N) int64 weight integers and scalar zero point as its product reads them
    (``op.integer_weights``), or None when its weights are not quantized constants."""
    q_w = op.constant_inputs.get(1)
    reader = getattr(op, "integer_weights", None)
    if reader is None or not isinstance(q_w, QuantizedArray):
        return None
    try:
        ints, z_w = reader(q_w, attrs)
    except (FhequantError, ValueError, TypeError):
        return None
    ints = np.asarray(ints)
    if ints.shape != shape or ints.dtype.kind not in "iu" or np.ndim(z_w) != 0:
        return None
    if float(z_w) != int(z_w):
        return None
    return np.ascontiguousarray(ints, dtype=np.int64), int(z_w)


def _matmul_plan(weight: np.ndarray, bias: Any, attrs: dict[str, Any]) -> _Plan | None:
    k, m = weight.shape
    if k == 0 or m == 0:
        return None
    vector = None
    if bias is not None:
        # an array bias broadcast along the rows: shape (m,), (1,), (1, m) or (1, 1)
        if not isinstance(bias, np.ndarray) or bias.dtype not in _FLOATS:
            return None
        if bias.ndim not in (1, 2) or bias.shape[-1] not in (1, m):
            return None
        if bias.ndim == 2 and bias.shape[0] != 1:
            return None
        vector = np.ascontiguousarray(np.broadcast_to(bias.reshape(-1), (m,)))
    return _Plan("matmul", np.ascontiguousarray(weight), vector, attrs)


def _conv_plan(weight: np.ndarray, bias: Any, attrs: dict[str, Any]) -> _Plan | None:
    if weight.ndim not in (3, 4) or 0 in weight.shape:
        return None
    channels = weight.shape[0]
    vector = None
    if bias is not None:
        try:
            flat = np.asarray(bias, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return None
        if flat.size not in (1, channels):
            return None
        vector = np.ascontiguousarray(np.broadcast_to(flat, (channels,)))
    w64 = np.ascontiguousarray(weight, dtype=np.float64)
    return _Plan("conv", w64, vector, attrs)


def _matmul_extremes(
    plan: _Plan, x: np.ndarray, dequant: tuple[float, float] | None
) -> tuple[float, float, bool] | None:
    k, _ = plan.weight.shape
    if x.ndim < 2 or x.shape[-1] != k or x.size == 0:
        return None
    a = np.ascontiguousarray(x).reshape(-1, k)
    if dequant is None and a.dtype == _F32 and plan.weight.dtype == _F32:
        return _core.matmul_extremes_f32(a, plan.weight, plan.bias, exact=EXACT_EXTREMES)
    w64, b64 = plan.weight64, plan.bias64
    assert w64 is not None
    if dequant is None:
        return _core.matmul_extremes_f64(a, w64, b64, exact=EXACT_EXTREMES)
    return _core.matmul_extremes_f64(a, w64, b64, dequant[0], dequant[1], exact=EXACT_EXTREMES)


def _integer_filtered(plan: _Plan, x: np.ndarray, dequant: tuple[float, float] | None) -> bool:
    """Whether block ``x`` (stored integers) goes to the product kernel: the integer product
    filters the extremes (cheaper than the float filter) and is kept when ``products`` has
    room for it, else dropped."""
    if dequant is None or plan.integers is None:
        return False
    k = plan.integers[0].shape[0]
    return x.ndim >= 2 and x.shape[-1] == k and x.size > 0


def _matmul_products(
    plan: _Plan, x: np.ndarray, dequant: tuple[float, float], products: Products | None, b: int
) -> tuple[float, float, bool] | None:
    """The extremes of a block of stored integers from its integer product, which is kept in
    ``products`` (when given) if it fits the budget."""
    assert plan.integers is not None and plan.weight64 is not None
    wq, z_w = plan.integers
    k, n = wq.shape
    a = np.ascontiguousarray(x).reshape(-1, k)
    keep = products is not None and products.fits(a.shape[0] * n * 4)
    before = _core.acc_extremes_filter_counts()
    try:
        acc, lo, hi, finite = _core.int_matmul_acc_extremes(
            a, wq, z_w, plan.weight64, plan.bias64, *dequant, keep, exact=EXACT_EXTREMES
        )
    except FhequantError:
        # the product does not fit int32 (or the kernel refuses the operands): the float
        # filter serves this op, and its output pass computes the product as usual
        plan.integers = None
        return _matmul_extremes(plan, x, dequant)
    after = _core.acc_extremes_filter_counts()
    loose = after[2] > before[2] or after[3] - before[3] > a.shape[0] * LOOSE_SURVIVORS
    if loose and products is None:
        # the estimate was too loose on this block (coarse weights): the float filter
        # serves the next blocks of this op (same extremes either way; kept products
        # stay, their output pass saves the product)
        plan.integers = None
    if keep:
        assert acc is not None and products is not None  # asked with keep=True
        products.keep(b, acc.reshape(*x.shape[:-1], n))
    return lo, hi, finite


def _conv_extremes(
    plan: _Plan, x: np.ndarray, dequant: tuple[float, float] | None
) -> tuple[float, float, bool] | None:
    w = plan.weight
    if x.ndim != w.ndim or x.size == 0:
        return None
    nsp = x.ndim - 2
    attrs = plan.attrs
    k = w.shape[2:]
    s = per_axis(attrs.get("strides"), nsp, 1, "strides")
    d = per_axis(attrs.get("dilations"), nsp, 1, "dilations")
    begins, ends = resolve_pads(
        attrs.get("auto_pad", "NOTSET"), attrs.get("pads"), x.shape[2:], k, s, d
    )
    check_window_geometry(x.shape[1], x.shape[2:], k, s, d, begins, ends, "Conv")
    group = int(attrs.get("group", 1))
    seen = np.empty((0, *x.shape[1:]), dtype=_F64 if dequant is not None else x.dtype)
    if not _native_conv_fits(seen, w, d, begins, ends, group):
        return None
    if nsp == 1:
        x = x[:, :, None, :]
        w = w[:, :, None, :]
        s, d, begins, ends = (1, *s), (1, *d), (0, *begins), (0, *ends)
    xs = np.ascontiguousarray(x)
    args = (
        (int(s[0]), int(s[1])),
        (int(d[0]), int(d[1])),
        (int(begins[0]), int(begins[1])),
        (int(ends[0]), int(ends[1])),
        group,
        plan.bias,
    )
    if dequant is None:
        return _core.conv2d_extremes_f64(xs, np.ascontiguousarray(w), *args, exact=EXACT_EXTREMES)
    return _core.conv2d_extremes_f64(
        xs, np.ascontiguousarray(w), *args, dequant[0], dequant[1], exact=EXACT_EXTREMES
    )
