"""Small helpers shared by the op families."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from onnx import helper

from fhequant.errors import OnnxImportError

F = TypeVar("F", bound=Callable[..., Any])


def quiet(fn: F) -> F:
    """Run ``fn`` with numpy floating-point warnings off (onnxruntime returns inf/nan silently)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def onnx_dtype(to: int) -> np.dtype[Any]:
    """The numpy dtype of an ONNX TensorProto data type."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(int(to)))
    except (KeyError, TypeError, ValueError) as exc:
        raise OnnxImportError(f"ONNX data type {to} has no numpy equivalent") from exc


def int_list(values: Any) -> list[int]:
    """A raw 1-D tensor (or sequence) of integers as a Python list."""
    return [int(v) for v in np.asarray(values).reshape(-1)]


def norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    """Negative axes counted from the end, checked against ``rank``."""
    out = []
    for a in axes:
        a = int(a)
        if not -rank <= a < rank:
            raise OnnxImportError(f"axis {a} is out of range for a tensor of rank {rank}")
        out.append(a % rank if rank else 0)
    return out
