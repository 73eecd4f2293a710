"""Reductions: ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd.

Opsets 13-17 give the axes as an attribute (except ReduceSum), 18+ as an optional input; both
are accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fhequant.onnx.ops._util import int_list, norm_axes
from fhequant.onnx.registry import register

_ATTRS = {"axes": None, "keepdims": 1, "noop_with_empty_axes": 0}


def _lowest(dtype: np.dtype[Any]) -> Any:
    if dtype.kind == "f":
        return -np.inf
    return False if dtype.kind == "b" else np.iinfo(dtype).min


def _highest(dtype: np.dtype[Any]) -> Any:
    if dtype.kind == "f":
        return np.inf
    return True if dtype.kind == "b" else np.iinfo(dtype).max


# the value a max/min over an empty set takes (numpy raises instead)
_IDENTITY: dict[Any, Any] = {np.max: _lowest, np.min: _highest}


def _reducer(name: str, np_fn: Any) -> None:
    def impl(
        x: np.ndarray,
        axes_in: np.ndarray | None = None,
        *,
        axes: Sequence[int] | None = None,
        keepdims: int = 1,
        noop_with_empty_axes: int = 0,
    ) -> np.ndarray:
        ax = int_list(axes_in) if axes_in is not None else (list(axes) if axes else [])
        if not ax:
            if noop_with_empty_axes:
                return x
            red: tuple[int, ...] | None = None
        else:
            red = tuple(norm_axes(ax, np.ndim(x)))
        if np.size(x) == 0 and np_fn in _IDENTITY:  # onnxruntime: the identity element
            return np.asarray(
                np_fn(x, axis=red, keepdims=bool(keepdims), initial=_IDENTITY[np_fn](x.dtype))
            )
        return np.asarray(np_fn(x, axis=red, keepdims=bool(keepdims)))

    impl.__name__ = name.lower()
    impl.__doc__ = f"{name}: {np_fn.__name__} over the axes (all when none and not noop)."
    register(name, "data, axes?", _ATTRS, raw=("axes",))(impl)


_reducer("ReduceSum", np.sum)
_reducer("ReduceMean", np.mean)
_reducer("ReduceMax", np.max)
_reducer("ReduceMin", np.min)
_reducer("ReduceProd", np.prod)
