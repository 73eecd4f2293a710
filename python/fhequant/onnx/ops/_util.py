"""Small helpers shared by the op families."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from onnx import helper

from fhequant.errors import OnnxImportError, UnsupportedOpError

F = TypeVar("F", bound=Callable[..., Any])


def quiet(fn: F) -> F:
    """Run ``fn`` with numpy floating-point warnings off (onnxruntime returns inf/nan silently)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64, BOOL, FLOAT16, DOUBLE, UINT32, UINT64
NUMPY_ONNX_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13})


def onnx_dtype(to: int) -> np.dtype[Any]:
    """The numpy dtype of an ONNX TensorProto data type numpy computes with natively.

    Raises:
        UnsupportedOpError: bfloat16, float8/float4, int4/int2, strings, complex, ... (numpy
            has no native arithmetic for them, so casts to them would be silently wrong).
    """
    if int(to) not in NUMPY_ONNX_TYPES:
        try:
            name = helper.tensor_dtype_to_string(int(to))
        except Exception:  # an unknown number
            name = str(to)
        raise UnsupportedOpError(
            f"ONNX data type {name} is not supported: fhequant computes with bool, (u)int8-64 "
            "and float16/32/64 tensors"
        )
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
