"""Integer Gemm / MatMul (docs/contract.md §3.1): the numpy twins."""

from __future__ import annotations

from typing import Any

from fhequant.kernels.reference._checks import I64, _check_lsbs
from fhequant.kernels.reference._operands import _gemm_operands
from fhequant.kernels.reference.rescale import float64_rescale
from fhequant.kernels.reference.rounding import round_bit_pattern_reference


def integer_gemm_reference(
    q_x: Any, q_w: Any, z_x: Any = 0, z_w: Any = 0, name: str = "Gemm"
) -> tuple[I64, I64]:
    """Zero-point-corrected integer matmul (Jacob et al. 2018, Eq. 7; docs/contract.md §3.1).

    Args:
        q_x: integer input, (..., M, K) or (K,).
        q_w: integer weights after transB, (K, N) or (..., K, N).
        z_x: input zero point (integer scalar).
        z_w: weight zero point (integer scalar).
        name: op name used in error messages.

    Returns:
        (acc, sum_w): acc = q_x @ q_w - z_w·Σ_k q_x (int64, the shape of q_x @ q_w) and
        sum_w = z_x·Σ_k q_w with keepdims on axis -2.
    """
    a, b, zx, zw = _gemm_operands(q_x, q_w, z_x, z_w, name, check=True)
    acc = a @ b
    if zw != 0:
        acc = acc - zw * a.sum(axis=-1, keepdims=True)
    return acc, zx * b.sum(axis=-2, keepdims=True)


def integer_gemm_rescale_reference(
    q_x: Any,
    q_w: Any,
    z_w: Any,
    lsbs: int,
    offset: Any,
    sub: Any,
    mul: Any,
    add: Any = None,
    name: str = "Gemm",
) -> Any:
    """The clear Gemm up to its output quantization (docs/contract.md §3.1, §2.4).

    ``v = ((float64(round(acc)) + offset) - sub)·mul (+ add)`` with ``acc`` the corrected
    matmul of :func:`integer_gemm_reference` and ``round`` the round_bit_pattern of
    ``lsbs`` bits (none for lsbs <= 0): the numpy steps of ``QuantizedGemm.q_impl``.

    Args:
        q_x: integer input, (..., M, K) or (K,).
        q_w: integer weights after transB, (K, N) or (..., K, N).
        z_w: weight zero point (integer scalar).
        lsbs: bits removed by the rounding of the accumulator.
        offset: added first (p·z_x·z_w).
        sub: subtracted next (z_x·Σ_k q_w).
        mul: multiplied next (s_x·s_w).
        add: added last (the float bias), or None.
        name: op name used in error messages.

    Returns:
        The float values (numpy's dtype and shape for these operands).
    """
    acc, _ = integer_gemm_reference(q_x, q_w, 0, z_w, name)
    if _check_lsbs(lsbs, name) > 0:
        acc = round_bit_pattern_reference(acc, lsbs, name)
    return float64_rescale(acc, offset, sub, mul, add)
