"""The kernels, with numpy semantics: the facade of the native core (the lowest layer).

* the integer kernels of the quantized ops (this package's names, defined in
  ``kernels/{gemm,conv,pool,rounding,bounds}.py``);
* the split-independent float matmul of calibration (``kernels/float_matmul.py``);
* the quantization kernels of the quantizers (``kernels/quant.py``: quantize, dequantize,
  min/max, rounded unique values);
* the block cache, the numpy allocator that keeps block-sized buffers for reuse during and
  between calibrations (``kernels/memory.py``).

Every kernel has one dispatch point and a ``*_reference`` twin in plain numpy in
:mod:`fhequant.kernels.reference`: the twin *is* the specification (docs/contract.md §0, §1, §2.4,
§3.1, §3.2, §3.6, §7) and the property tests check the dispatched version against it exactly.
A kernel falls back to its twin only for the operands the core does not take (documented per
module). Ops call the names of this package. All integer inputs are cast to int64
(non-integer dtypes raise DTypeError); zero points must be integer scalars.

Stable API (used by the PTQ ops):

* ``integer_gemm(q_x, q_w, z_x=0, z_w=0, name="Gemm") -> (acc, sum_w)``. ``q_x`` is
  (..., M, K) (or (K,)), ``q_w`` is (K, N) or batched (..., K, N), already transposed
  (docs/contract.md §3.1: B after transB). ``acc = q_x @ q_w - z_w·Σ_k q_x[..., k]`` (int64, shape
  of ``q_x @ q_w``); ``sum_w = z_x·Σ_k q_w[..., k, :]`` with keepdims ((1, N) for 2-D weights).
  The caller adds ``p·z_x·z_w - sum_w`` (p = K) after rounding.
* ``integer_gemm_rescale(q_x, q_w, z_w, lsbs, offset, sub, mul, add=None, name)``: the
  rounding and float64 rescale of a hidden Gemm fused with its matmul (one native pass).
* ``integer_conv(q_x, q_w, z_x=0, z_w=0, *, strides, pads, group, name) -> (acc, sum_w)``:
  NCHW (or NCL) input padded with z_x, ``acc = conv(x_pad, w) - z_w·conv(x_pad, 1)``,
  ``sum_w = z_x·Σ_{c,kh,kw} q_w`` as (1, O, 1, 1) ((1, O, 1) in 1-D).
* ``integer_conv_rescale(q_x, q_w, z_x, z_w, lsbs, offset, sub, mul, add=None, *, ...)``:
  the rounding and float64 rescale of a hidden Conv fused with its conv (one native pass).
* ``integer_gemm_rescale_quant(..., quant, name)`` / ``integer_conv_rescale_quant(..., quant,
  *, ...)``: the same, quantized by the output quantizer ``quant`` = (scale, zero_point, lo,
  hi) in the kernel: (int8/int16 integers, min, max), or None when it does not apply
  (``kernels/requant.py``; the calibration walk's output passes).
* ``integer_accumulator_rescale_quant(acc, lsbs, offset, sub, mul, add, quant, name)``: the
  same from an int32 product already computed (kept by the statistics pass).
* ``window_sum(q_x, kernel_shape, strides, pads, z_x, ceil_mode=0)`` (AveragePool) and
  ``window_max(q_x, kernel_shape, strides, pads, z_x)`` (MaxPool).
* ``unfold(q_x, kernel_shape, strides, pads, z_x)`` (Unfold, torch column order).
* ``round_bit_pattern(x, lsbs)``; ``bit_width(lo, hi)``.
* ``gemm_bounds``, ``conv_bounds``, ``window_sum_bounds``: the exact worst-case
  accumulator range over the input quantizer's integer range (after rounding).

Before any product the worst-case accumulator is bounded from the operand ranges
(terms·max|x|·max|w - z_w|); if int64 could overflow, OverflowRiskError is raised, naming
the op, the operands' ranges and their bit widths. The result is never silently wrong.
"""

from __future__ import annotations

from fhequant.kernels.bounds import conv_bounds, gemm_bounds, window_sum_bounds
from fhequant.kernels.conv import integer_conv, integer_conv_rescale
from fhequant.kernels.float_matmul import sequential_matmul
from fhequant.kernels.gemm import integer_gemm, integer_gemm_rescale
from fhequant.kernels.pool import unfold, window_max, window_sum
from fhequant.kernels.reference._operands import ceil_mode_extension
from fhequant.kernels.reference.rescale import float64_rescale
from fhequant.kernels.requant import (
    integer_accumulator_rescale_quant,
    integer_conv_rescale_quant,
    integer_gemm_rescale_quant,
)
from fhequant.kernels.rounding import bit_width, round_bit_pattern

__all__ = [
    "bit_width",
    "ceil_mode_extension",
    "conv_bounds",
    "float64_rescale",
    "gemm_bounds",
    "integer_accumulator_rescale_quant",
    "integer_conv",
    "integer_conv_rescale",
    "integer_conv_rescale_quant",
    "integer_gemm",
    "integer_gemm_rescale",
    "integer_gemm_rescale_quant",
    "round_bit_pattern",
    "sequential_matmul",
    "unfold",
    "window_max",
    "window_sum",
    "window_sum_bounds",
]
