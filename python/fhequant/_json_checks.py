"""Checks applied while loading JSON documents (docs/contract.md §1.6): numeric dtypes and
values of the numpy codecs, the nesting depth, and :func:`field` for ``load_dict``
implementations. Every failure is a SerializationError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fhequant.errors import SerializationError

__all__ = [
    "MAX_DEPTH",
    "check_depth",
    "field",
    "load_list_as",
    "load_numpy_array",
    "load_numpy_bool",
    "load_numpy_float",
    "load_numpy_integer",
    "numeric_dtype",
]


#: numpy dtype kinds a document may hold: bool, signed and unsigned integers, floats.
_NUMERIC_KINDS = "biuf"


def numeric_dtype(dtype: Any) -> np.dtype[Any]:
    """``np.dtype(dtype)`` for a plain bool/int/float dtype name, else SerializationError
    (object, string, structured and sub-array dtypes are refused)."""
    if not isinstance(dtype, str):
        raise SerializationError(f"a dtype is a string such as 'float64', got {dtype!r}")
    try:
        parsed = np.dtype(dtype)
    except TypeError as exc:
        raise SerializationError(f"unknown dtype {dtype!r}") from exc
    if parsed.kind not in _NUMERIC_KINDS or parsed.fields is not None or parsed.subdtype:
        raise SerializationError(
            f"dtype {dtype!r} is not allowed in a document; only bool, integer and float dtypes are"
        )
    return parsed


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_numpy_array(value: Any, dtype: str | None) -> Any:
    target = numeric_dtype(dtype) if dtype is not None else None
    if not (_is_number(value) or isinstance(value, (bool, list))):
        raise SerializationError(
            f"a numpy_array holds a number or nested lists, got {type(value).__name__}"
        )
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nesting
        raise SerializationError(f"a numpy_array holds ragged lists ({exc})") from exc
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise SerializationError(
            f"a numpy_array holds {array.dtype} items; only numbers (and bools) are allowed"
        )
    if target is None:
        return array
    with np.errstate(all="ignore"):
        if target.kind in "iu" and array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise SerializationError(f"a numpy_array of dtype {target} holds NaN or infinity")
        if target.kind in "iu" and array.size:
            info = np.iinfo(target)
            if array.max() > info.max or array.min() < info.min:
                raise SerializationError(
                    f"a numpy_array of dtype {target} holds out-of-range values"
                )
        return array.astype(target)


def load_numpy_integer(value: Any, dtype: str | None) -> Any:
    target = np.dtype(np.int64) if dtype is None else numeric_dtype(dtype)
    if not isinstance(value, int) or isinstance(value, bool) or target.kind not in "iu":
        raise SerializationError(
            f"a numpy_integer holds an int with an integer dtype, got {value!r} ({dtype!r})"
        )
    info = np.iinfo(target)
    if not info.min <= value <= info.max:
        raise SerializationError(f"numpy_integer {value} does not fit {target}")
    return target.type(value)


def load_numpy_float(value: Any, dtype: str | None) -> Any:
    target = np.dtype(np.float64) if dtype is None else numeric_dtype(dtype)
    if not _is_number(value) or target.kind != "f":
        raise SerializationError(
            f"a numpy_float holds a number with a float dtype, got {value!r} ({dtype!r})"
        )
    try:
        as_float = np.float64(value)
    except OverflowError as exc:
        raise SerializationError(f"numpy_float {value} does not fit float64") from exc
    with np.errstate(over="ignore"):
        return as_float.astype(target)


def load_numpy_bool(value: Any, _dtype: str | None) -> Any:
    if not isinstance(value, bool):
        raise SerializationError(f"a numpy_bool holds true or false, got {value!r}")
    return np.bool_(value)


def load_list_as(kind: type) -> Callable[[Any, str | None], Any]:
    def load(value: Any, _dtype: str | None) -> Any:
        if not isinstance(value, list):
            raise SerializationError(
                f"a {kind.__name__} is written as a list, got {type(value).__name__}"
            )
        try:
            return kind(value)
        except TypeError as exc:  # unhashable set items
            raise SerializationError(f"cannot build a {kind.__name__}: {exc}") from exc

    return load


#: Deepest nesting of lists and objects a document may have (a QuantizedModule needs
#: about 15); deeper documents are refused before decoding.
MAX_DEPTH = 100


def check_depth(data: Any) -> None:
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SerializationError(
                f"the document is nested more than {MAX_DEPTH} levels deep; it was not written "
                "by fhequant"
            )
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def field(
    metadata: dict[str, Any],
    name: str,
    owner: str,
    check: Callable[[Any], bool],
    expected: str,
    *,
    optional: bool = False,
    nullable: bool = False,
) -> Any:
    """``metadata[name]`` after checking it (for ``load_dict`` implementations).

    Args:
        metadata: the decoded fields.
        name: the field.
        owner: the class named in errors.
        check: predicate the value must pass.
        expected: what the value should be, for the message.
        optional: the field may be missing (then None is returned) or None.
        nullable: the field must be present but may be None.

    Raises:
        SerializationError: the field is missing or fails ``check``, naming both.
    """
    if name not in metadata:
        if optional:
            return None
        raise SerializationError(f"{owner}: the field {name!r} is missing")
    value = metadata[name]
    if value is None and (optional or nullable):
        return None
    if not check(value):
        raise SerializationError(
            f"{owner}: the field {name!r} must be {expected}, got {type(value).__name__} "
            f"{_short(value)}"
        )
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
