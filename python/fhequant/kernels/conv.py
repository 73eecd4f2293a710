"""Integer Conv, 1-D or 2-D (docs/contract.md §3.2), dispatched to the native core.

The numpy twins are in :mod:`fhequant.kernels.reference.conv`; the fused rescale falls back
to its twin for an empty input or operands that numpy would broadcast differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhequant import _core
from fhequant.kernels._rescale import rescale_vectors
from fhequant.kernels.reference._checks import I64, _check_lsbs
from fhequant.kernels.reference._operands import _conv_operands
from fhequant.kernels.reference.conv import integer_conv_rescale_reference


def integer_conv(
    q_x: Any,
    q_w: Any,
    z_x: Any = 0,
    z_w: Any = 0,
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    group: int = 1,
    name: str = "Conv",
) -> tuple[I64, I64]:
    x, w, zx, zw, group, s, p, spatial = _conv_operands(
        q_x, q_w, z_x, z_w, strides, pads, group, name, check=False
    )
    acc = _core.int_conv2d(x, w, zw, group, s, p, zx, name)
    sum_w = _core.int_conv_weight_sums(w, zx, name).reshape(1, w.shape[0], 1, 1)
    if spatial == 1:
        return acc[:, :, 0, :], sum_w[:, :, 0, :]
    return acc, sum_w


def integer_conv_rescale(
    q_x: Any,
    q_w: Any,
    z_x: Any,
    z_w: Any,
    lsbs: int,
    offset: Any,
    sub: Any,
    mul: Any,
    add: Any = None,
    *,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    group: int = 1,
    name: str = "Conv",
) -> Any:
    x, w, zx, zw, group, s, p, spatial = _conv_operands(
        q_x, q_w, z_x, z_w, strides, pads, group, name, check=False
    )
    k_lsbs = _check_lsbs(lsbs, name)
    vectors = rescale_vectors(offset, sub, mul, add, w.shape[0], spatial + 2, 1)
    if x.size == 0 or vectors is None:
        return integer_conv_rescale_reference(
            q_x, q_w, zx, zw, k_lsbs, offset, sub, mul, add,
            strides=strides, pads=pads, group=group, name=name,
        )  # fmt: skip
    v = _core.int_conv2d_rescale(x, w, zw, group, s, p, zx, k_lsbs, *vectors, name)
    if spatial == 1:
        return v.reshape(v.shape[0], v.shape[1], v.shape[3])
    return v
