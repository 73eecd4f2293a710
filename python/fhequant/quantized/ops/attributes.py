"""Attribute checks every quantized op runs at construction (not at calibration).

ONNX attributes a user may set by hand when driving ops one by one (``QuantizedConv(...,
strides=(1,))``) are checked when the op is built: unknown names, 0/1 flags holding another
value, and window attributes (``kernel_shape``, ``strides``, ``dilations``, ``pads``) that are
not integer lists of matching ranks. Each error is a ``QuantizedOpError`` naming the op and
the attribute. Op-specific limits (supported modes, 2-D windows) stay with the op's class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fhequant.errors import QuantizedOpError
from fhequant.quantized.ops.float_specs import FloatOpSpec

__all__ = ["FLAG_ATTRIBUTES", "WINDOW_ATTRIBUTES", "check_attributes"]

#: ONNX attributes that are booleans stored as ints: 0 or 1 only.
FLAG_ATTRIBUTES = frozenset(
    {
        "allowzero",
        "ceil_mode",
        "count_include_pad",
        "keepdims",
        "narrow",
        "noop_with_empty_axes",
        "saturate",
        "signed",
        "storage_order",
        "training_mode",
        "transA",
        "transB",
    }
)

#: Window attributes: (name, smallest value, entries per spatial axis).
WINDOW_ATTRIBUTES = (
    ("kernel_shape", 1, 1),
    ("strides", 1, 1),
    ("dilations", 1, 1),
    ("pads", 0, 2),
)


def _is_int(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, (float, np.floating)) and float(value).is_integer()


def _check_flag(label: str, name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (bool, np.bool_)) or (_is_int(value) and int(value) in (0, 1)):
        return
    raise QuantizedOpError(f"{label}: attribute {name}={value!r} must be 0 or 1")


def _int_list(label: str, name: str, value: Any, smallest: int) -> list[int]:
    if isinstance(value, (str, bytes)) or np.ndim(value) != 1:
        raise QuantizedOpError(
            f"{label}: attribute {name}={value!r} must be a list of integers (one entry per "
            "spatial axis)"
        )
    items = list(np.asarray(value, dtype=object).tolist())
    if not all(_is_int(v) and int(v) >= smallest for v in items):
        raise QuantizedOpError(
            f"{label}: attribute {name}={items!r} must hold integers >= {smallest}"
        )
    return [int(v) for v in items]


def _check_windows(label: str, attrs: Mapping[str, Any], spatial_rank: int | None) -> None:
    ranks: dict[str, int] = {}
    for name, smallest, per_axis in WINDOW_ATTRIBUTES:
        value = attrs.get(name)
        if value is None:
            continue
        items = _int_list(label, name, value, smallest)
        if len(items) % per_axis:
            raise QuantizedOpError(
                f"{label}: attribute {name}={items} must have an even number of entries "
                "(begin and end pads of each spatial axis)"
            )
        ranks[name] = len(items) // per_axis
    if spatial_rank is None and "kernel_shape" in ranks:
        spatial_rank = ranks["kernel_shape"]
    if spatial_rank is None and ranks:
        spatial_rank = max(ranks.values())
    if spatial_rank is None:
        return
    for name, rank in ranks.items():
        if rank != spatial_rank:
            per_axis = 2 if name == "pads" else 1
            raise QuantizedOpError(
                f"{label}: attribute {name}={list(attrs[name])} has {rank * per_axis} "
                f"entries; a {spatial_rank}-D window needs {spatial_rank * per_axis}"
            )


def check_attributes(
    label: str,
    spec: FloatOpSpec,
    given: Mapping[str, Any],
    merged: Mapping[str, Any],
    spatial_rank: int | None = None,
) -> None:
    """Check an op's attributes at construction.

    Args:
        label: the op ("QuantizedConv 'conv1'"), for errors.
        spec: the op's float spec (its attribute names).
        given: the attributes passed to the constructor.
        merged: the attributes with the defaults filled in.
        spatial_rank: the number of spatial axes, when the op knows it (Conv: its weights).

    Raises:
        QuantizedOpError: an unknown attribute, a flag other than 0/1, or window attributes
            that are not integer lists of one rank.
    """
    unknown = sorted(set(given) - set(spec.attr_defaults))
    if unknown:
        raise QuantizedOpError(
            f"{label}: unknown attribute(s) {unknown}; valid attributes are "
            f"{sorted(spec.attr_defaults)}"
        )
    for name in FLAG_ATTRIBUTES.intersection(merged):
        _check_flag(label, name, merged[name])
    _check_windows(label, merged, spatial_rank)
