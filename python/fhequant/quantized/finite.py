"""The finiteness check of calibration values, shared by the walk and the fused statistics."""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant.errors import NonFiniteError

__all__ = ["check_finite"]


def check_finite(lo: Any, hi: Any, tensor: str, where: str) -> None:
    """Raise NonFiniteError when the min ``lo`` or max ``hi`` of ``tensor`` is not finite.

    Args:
        lo: the tensor's (block's) minimum.
        hi: its maximum.
        tensor: the tensor name, for the message.
        where: what holds the tensor (an op, the calibration data), for the message.
    """
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise NonFiniteError(
            f"{where}: tensor {tensor!r} contains NaN or infinite values (min {lo}, max {hi}); "
            "clean the calibration data or fix the model so every value stays finite"
        )
