"""Integer pools and Unfold (docs/contract.md §3.6), dispatched to the native core.

The numpy twins are in :mod:`fhequant.kernels.reference.pool`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fhequant import _core
from fhequant.kernels.reference._checks import I64
from fhequant.kernels.reference._operands import _pool_operands, _unfold_operands


def window_sum(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    ceil_mode: int = 0,
    name: str = "AveragePool",
) -> I64:
    x, k, s, p, extra, zx, one_d = _pool_operands(
        q_x, kernel_shape, strides, pads, z_x, ceil_mode, name
    )
    out = _core.int_window_sum(x, k, s, p, extra, zx, name)
    return out[:, :, 0, :] if one_d else out


def window_max(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    name: str = "MaxPool",
) -> I64:
    x, k, s, p, _, zx, one_d = _pool_operands(q_x, kernel_shape, strides, pads, z_x, 0, name)
    out = _core.int_window_max(x, k, s, p, zx, name)
    return out[:, :, 0, :] if one_d else out


def unfold(
    q_x: Any,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    z_x: Any,
    name: str = "Unfold",
) -> I64:
    x, k, s, p, zx = _unfold_operands(q_x, kernel_shape, strides, pads, z_x, name)
    c, kk = x.shape[1], k[0] * k[1]
    # A grouped conv with one identity kernel per (channel, tap).
    eye = np.eye(kk, dtype=np.int64).reshape(kk, 1, k[0], k[1])
    ident = np.tile(eye, (c, 1, 1, 1))
    out = _core.int_conv2d(x, ident, 0, c, s, p, zx, name)
    return out.reshape(x.shape[0], c * kk, -1)
