"""The float64 rescale of a Gemm/Conv accumulator (docs/contract.md §3.1, §3.2): the rule itself.

It is also what the ops apply to concrete tracers, so it lives with the specs and is
re-exported by the :mod:`fhequant.kernels` facade.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def float64_rescale(acc: Any, offset: Any, sub: Any, mul: Any, add: Any = None) -> Any:
    """``((float64(acc) + offset) - sub)·mul (+ add)``, one ufunc per step in this order: the
    rescale of a Gemm/Conv accumulator (docs/contract.md §3.1, §3.2) that the fused kernels
    reproduce. ``acc`` may be an array or a concrete tracer."""
    v = acc.astype(np.float64) + offset
    v = v - sub
    v = mul * v
    return v if add is None else v + add
