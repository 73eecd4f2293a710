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


# BFLOAT16, FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ, UINT4, INT4, FLOAT4E2M1,
# FLOAT8E8M0, UINT2, INT2: storage types, which Cast converts to and from (ml_dtypes arrays)
_FLOAT8 = frozenset({17, 18, 19, 20})
_SMALL_INTS = frozenset({21, 22, 25, 26})
_E8M0 = 24
STORAGE_ONNX_TYPES = frozenset({16, 23, _E8M0}) | _FLOAT8 | _SMALL_INTS


def storage_cast(x: np.ndarray, to: int, *, saturate: bool, round_mode: str) -> np.ndarray:
    """ONNX Cast of a numpy array to a storage type (ONNX's rules, as its reference
    implementation): float8 saturates to the finite range when ``saturate`` (else overflows to
    NaN/inf), int4/int2 and float4 convert as ml_dtypes does (round to nearest even), float8e8m0
    rounds by ``round_mode`` (up, down, nearest).

    Raises:
        UnsupportedOpError: a type that is neither numpy-native nor a storage type, or an onnx
            too old to map it to an ml_dtypes type.
    """
    if to not in STORAGE_ONNX_TYPES:
        onnx_dtype(to)  # raises the typed error for strings, complex, unknown numbers
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    except (KeyError, TypeError, ValueError) as exc:
        raise UnsupportedOpError(
            f"ONNX data type {to} has no numpy equivalent in onnx {_onnx_version()}: upgrade onnx"
        ) from exc
    if dtype.type.__module__ != "ml_dtypes":
        raise UnsupportedOpError(
            f"ONNX data type {helper.tensor_dtype_to_string(to)} needs onnx >= 1.18 (ml_dtypes "
            f"arrays); onnx {_onnx_version()} is installed"
        )
    if to == _E8M0:
        from onnx import numpy_helper

        if round_mode not in ("up", "down", "nearest"):
            raise OnnxImportError(f"Cast round_mode {round_mode!r}: expected up, down or nearest")
        as_float = np.asarray(x, dtype=np.float32)
        return np.asarray(numpy_helper.to_float8e8m0(as_float, saturate, round_mode)).astype(dtype)
    if to in _FLOAT8 and saturate:
        import ml_dtypes

        info = ml_dtypes.finfo(dtype)
        x = np.clip(np.asarray(x, dtype=np.float32), float(info.min), float(info.max))
    return np.asarray(x).astype(dtype)


def _onnx_version() -> str:
    import onnx

    return str(onnx.__version__)


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
