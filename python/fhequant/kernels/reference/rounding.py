"""round_bit_pattern (docs/contract.md §2.4) and the bit width of an integer range
(docs/contract.md §7): the specs."""

from __future__ import annotations

import math
from typing import Any

from fhequant.errors import OverflowRiskError
from fhequant.kernels.reference._checks import _I64_MAX, I64, _check_lsbs, _int64


def round_bit_pattern_reference(x: Any, lsbs: int, name: str = "round_bit_pattern") -> I64:
    """floor((x + 2^(k-1)) / 2^k)·2^k for k = lsbs > 0 (ties up), a copy for k <= 0.

    Args:
        x: integer array of any shape.
        lsbs: number of least significant bits to remove (at most 62).
        name: op name used in error messages.

    Returns:
        An int64 array of the shape of x.
    """
    arr = _int64(x, "the accumulator", name)
    k = _check_lsbs(lsbs, name)
    if k <= 0:
        return arr.copy()
    half = 1 << (k - 1)
    if arr.size and int(arr.max()) + half > _I64_MAX:
        raise OverflowRiskError(f"{name}: rounding {int(arr.max())} to 2^{k} leaves int64")
    return ((arr + half) >> k) << k


def bit_width_reference(lo: int, hi: int) -> int:
    """Bits of the smallest concrete-python integer type holding [lo, hi].

    Signed iff lo < 0. Per end: 0 → 1; v < 0 → ceil(log2|v|) + 1; v > 0 → ceil(log2(v + 1)),
    plus 1 if signed (as ``Integer.that_can_represent``, including its float log2).

    Args:
        lo: the smallest value.
        hi: the largest value.

    Returns:
        The bit width.
    """
    signed = lo < 0

    def bits(v: int) -> int:
        if v == 0:
            return 1
        if v < 0:
            return math.ceil(math.log2(-v)) + 1
        return math.ceil(math.log2(v + 1)) + int(signed)

    return max(bits(int(lo)), bits(int(hi)))
