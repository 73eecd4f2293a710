"""The numpy twins of the integer kernels: the executable specification.

Each ``*_reference`` function computes, in plain numpy (or Python integers for the bounds),
exactly what the dispatched kernel of :mod:`fhequant.kernels` returns; the property tests
check the two bit for bit. The dispatched kernels import a twin only to fall back to it for
the operands the native core does not take.
"""

from __future__ import annotations

from fhequant.kernels.reference._operands import ceil_mode_extension
from fhequant.kernels.reference.bounds import (
    conv_bounds_reference,
    gemm_bounds_reference,
    window_sum_bounds_reference,
)
from fhequant.kernels.reference.conv import integer_conv_reference, integer_conv_rescale_reference
from fhequant.kernels.reference.gemm import integer_gemm_reference, integer_gemm_rescale_reference
from fhequant.kernels.reference.pool import (
    unfold_reference,
    window_max_reference,
    window_sum_reference,
)
from fhequant.kernels.reference.requant import (
    integer_conv_rescale_quant_reference,
    integer_gemm_rescale_quant_reference,
)
from fhequant.kernels.reference.rescale import float64_rescale
from fhequant.kernels.reference.rounding import bit_width_reference, round_bit_pattern_reference

__all__ = [
    "bit_width_reference",
    "ceil_mode_extension",
    "conv_bounds_reference",
    "float64_rescale",
    "gemm_bounds_reference",
    "integer_conv_reference",
    "integer_conv_rescale_quant_reference",
    "integer_conv_rescale_reference",
    "integer_gemm_reference",
    "integer_gemm_rescale_quant_reference",
    "integer_gemm_rescale_reference",
    "round_bit_pattern_reference",
    "unfold_reference",
    "window_max_reference",
    "window_sum_bounds_reference",
    "window_sum_reference",
]
