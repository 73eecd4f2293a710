"""round_bit_pattern (docs/contract.md §2.4) and bit widths (docs/contract.md §7), dispatched to the
native core.

The numpy twins are in :mod:`fhequant.kernels.reference.rounding`; ``bit_width`` falls back
to its twin outside the core's ±2^127.
"""

from __future__ import annotations

from typing import Any

from fhequant import _core
from fhequant.kernels.reference._checks import I64, _check_lsbs, _int64
from fhequant.kernels.reference.rounding import bit_width_reference


def round_bit_pattern(x: Any, lsbs: int, name: str = "round_bit_pattern") -> I64:
    arr = _int64(x, "the accumulator", name)
    k = _check_lsbs(lsbs, name)
    return _core.int_round_bit_pattern(arr, k, name)


def bit_width(lo: int, hi: int) -> int:
    lo, hi = int(lo), int(hi)
    if all(-(2**127) <= v < 2**127 for v in (lo, hi)):
        return _core.int_bit_width(lo, hi)[0]
    return bit_width_reference(lo, hi)
