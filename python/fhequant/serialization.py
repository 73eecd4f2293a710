"""JSON serialization of fhequant objects (docs/contract.md §1.6 and §6.3). Never pickle.

An object is written as ``{"type_name": <registered name>, "serialized_value": <dict>}``, where
the dict comes from its ``dump_dict()``. Values JSON cannot hold natively are tagged the same
way: numpy scalars and arrays (plus a trailing ``"dtype"`` key), tuples, sets, ONNX models and
concrete's ``Exactness``. The text is standard JSON with ", " / ": " separators, no indent,
ASCII only, NaN/Infinity allowed, and floats in Python's shortest repr, so ``dumps()`` is
byte-identical to the reference's.

Classes register with :func:`register_class` (every :class:`Serializable` subclass does so on
definition); other value types register a codec with :func:`register_codec`. Decoding works
bottom-up, so a class's ``load_dict`` receives already decoded field values.

``dump()`` writes the same text as ``dumps()``, so quantizer files are byte-identical to the
reference's. Module-level documents (the QuantizedModule) carry the format version in an
envelope (``{"fhequant_format_version": FORMAT_VERSION, "content": ...}``, see
:func:`wrap_versioned`); ``load``/``loads`` accept both that envelope and a plain document,
and refuse an envelope of an unknown version.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import numpy as np

from fhequant._json_checks import (
    MAX_DEPTH,
    check_depth,
    field,
    load_list_as,
    load_numpy_array,
    load_numpy_bool,
    load_numpy_float,
    load_numpy_integer,
    numeric_dtype,
)
from fhequant.errors import SerializationError

__all__ = [
    "FORMAT_VERSION",
    "VERSION_KEY",
    "Serializable",
    "decode",
    "dump",
    "dumps",
    "encode",
    "field",
    "isolated_class_registry",
    "load",
    "loads",
    "numeric_dtype",
    "register_class",
    "register_codec",
    "registered_classes",
    "unwrap_versioned",
    "wrap_versioned",
]

#: Version of the on-disk format written by ``dump()``; bump it on incompatible changes.
FORMAT_VERSION = 1
#: Key of the versioned envelope; the document itself sits under ``"content"``.
VERSION_KEY = "fhequant_format_version"
_CONTENT_KEY = "content"
_SUPPORTED_VERSIONS = frozenset({1})

_TYPE = "type_name"
_VALUE = "serialized_value"
_DTYPE = "dtype"

T = TypeVar("T")
S = TypeVar("S", bound="Serializable")

_CLASSES: dict[str, type[Any]] = {}
_NAMES: dict[type[Any], str] = {}


@dataclass(frozen=True)
class _Codec:
    """How one non-class value type is written and read back."""

    type_name: str
    matches: Callable[[Any], bool]
    encode: Callable[[Any], Any]
    decode: Callable[[Any, str | None], Any]
    with_dtype: Callable[[Any], str] | None = None
    native: bool = False  # encode() already returns plain JSON data: no further pass


_CODECS: list[_Codec] = []
_CODECS_BY_NAME: dict[str, _Codec] = {}


def register_class(cls: type[T], name: str | None = None) -> type[T]:
    """Register a class with ``dump_dict()`` and ``load_dict(dict)`` under ``name``.

    Args:
        cls: the class; it must define ``dump_dict`` and a static/class ``load_dict``.
        name: the ``type_name`` written in JSON (default: the class name).

    Returns:
        The class itself, so this can be used as a decorator.
    """
    type_name = cls.__name__ if name is None else name
    if type_name in _CODECS_BY_NAME:
        raise SerializationError(
            f"cannot register class {cls.__qualname__} as {type_name!r}: that name is a "
            "built-in value encoding; pick another name"
        )
    previous = _CLASSES.get(type_name)
    # The same class defined again (module reload) replaces itself; another class may not.
    if previous is not None and (previous.__module__, previous.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise SerializationError(
            f"type_name {type_name!r} is already registered for {previous.__module__}."
            f"{previous.__qualname__}; register {cls.__qualname__} under another name"
        )
    if previous is not None:
        _NAMES.pop(previous, None)
    _CLASSES[type_name] = cls
    _NAMES[cls] = type_name
    return cls


def registered_classes() -> dict[str, type[Any]]:
    """A copy of the class registry (type_name → class)."""
    return dict(_CLASSES)


@contextlib.contextmanager
def isolated_class_registry() -> Iterator[None]:
    """A scope whose class registrations are undone when it ends (for classes defined by tests).

    Classes registered inside the block (e.g. by defining a ``Serializable`` subclass) can be
    written and read while it lasts; afterwards the registry is exactly what it was before.
    """
    classes, names = dict(_CLASSES), dict(_NAMES)
    try:
        yield
    finally:
        _CLASSES.clear()
        _CLASSES.update(classes)
        _NAMES.clear()
        _NAMES.update(names)


def register_codec(
    type_name: str,
    matches: Callable[[Any], bool],
    encode_value: Callable[[Any], Any],
    decode_value: Callable[[Any, str | None], Any],
    dtype_of: Callable[[Any], str] | None = None,
    native: bool = False,
) -> None:
    """Register how a value type that is not a registered class is written.

    Args:
        type_name: the ``type_name`` written in JSON.
        matches: predicate selecting the values this codec writes (checked in registration
            order, after the built-in numpy codecs).
        encode_value: value → JSON-compatible ``serialized_value`` (it is encoded further).
        decode_value: (decoded serialized_value, dtype name or None) → value.
        dtype_of: if given, a trailing ``"dtype"`` key with this name is written.
        native: ``encode_value`` returns plain JSON data (no nested values to encode).
    """
    if type_name in _CLASSES or type_name in _CODECS_BY_NAME:
        raise SerializationError(f"type_name {type_name!r} is already registered")
    codec = _Codec(type_name, matches, encode_value, decode_value, dtype_of, native)
    _CODECS.append(codec)
    _CODECS_BY_NAME[type_name] = codec


# --- built-in codecs -------------------------------------------------------------------------


def _module_of(value: Any) -> str:
    return type(value).__module__ or ""


def _is_onnx_model(value: Any) -> bool:
    return type(value).__name__ == "ModelProto" and _module_of(value).startswith("onnx")


def _load_onnx_model(value: Any, _dtype: str | None) -> Any:
    import onnx

    if not isinstance(value, str):
        raise SerializationError(f"an onnx_model is a hex string, got {type(value).__name__}")
    try:
        return onnx.load_model_from_string(bytes.fromhex(value))
    except Exception as exc:  # protobuf's DecodeError, ValueError of fromhex
        raise SerializationError(f"not a serialized ONNX model ({type(exc).__name__})") from exc


def _is_exactness(value: Any) -> bool:
    return type(value).__name__ == "Exactness" and _module_of(value).startswith("concrete")


def _load_exactness(value: Any, _dtype: str | None) -> Any:
    from fhequant._concrete import fhe_module

    try:
        return fhe_module().Exactness(value)
    except (ValueError, TypeError) as exc:
        raise SerializationError(f"{value!r} is not a concrete Exactness value") from exc


def _numpy_array_to_list(value: np.ndarray) -> Any:
    if value.dtype.kind not in "biuf":
        raise SerializationError(
            f"cannot write a numpy array of dtype {value.dtype} to JSON; only bool, integer "
            "and float arrays are supported"
        )
    return value.tolist()


register_codec(
    "numpy_integer",
    lambda v: isinstance(v, np.integer),
    int,
    load_numpy_integer,
    lambda v: v.dtype.name,
    native=True,
)
register_codec(
    "numpy_float",
    lambda v: isinstance(v, np.floating),
    float,
    load_numpy_float,
    lambda v: v.dtype.name,
    native=True,
)
register_codec(
    "numpy_bool",
    lambda v: isinstance(v, np.bool_),
    bool,
    load_numpy_bool,
    lambda v: v.dtype.name,
    native=True,
)
register_codec(
    "numpy_array",
    lambda v: isinstance(v, np.ndarray),
    _numpy_array_to_list,
    load_numpy_array,
    lambda v: v.dtype.name,
    native=True,
)
register_codec("tuple", lambda v: isinstance(v, tuple), list, load_list_as(tuple))
register_codec("set", lambda v: isinstance(v, (set, frozenset)), sorted, load_list_as(set))
register_codec(
    "onnx_model",
    _is_onnx_model,
    lambda v: v.SerializeToString().hex(),
    _load_onnx_model,
    native=True,
)
register_codec("Exactness", _is_exactness, lambda v: v.value, _load_exactness, native=True)


# --- encoding ------------------------------------------------------------------------------


def _encode_key(key: Any) -> str | int | float | bool | None:
    if isinstance(key, (str, int, float, bool)) or key is None:
        return key
    if isinstance(key, np.integer):
        return int(key)
    raise SerializationError(
        f"cannot write a dict key of type {type(key).__name__} ({key!r}) to JSON; use "
        "str or int keys"
    )


def encode(value: Any) -> Any:
    """Turn ``value`` into JSON-compatible Python data (dicts, lists, str, numbers, None).

    Args:
        value: a native value, a numpy value, a tuple/set, an ONNX model, or an object of a
            registered class (anything with ``dump_dict``).

    Returns:
        The tree that ``json.dumps`` writes.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    for codec in _CODECS:  # numpy first: np.float64 is also a Python float
        if codec.matches(value):
            raw = codec.encode(value)
            out: dict[str, Any] = {
                _TYPE: codec.type_name,
                _VALUE: raw if codec.native else encode(raw),
            }
            if codec.with_dtype is not None:
                out[_DTYPE] = codec.with_dtype(value)
            return out
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {_encode_key(k): encode(v) for k, v in value.items()}
    dump_dict = getattr(value, "dump_dict", None)
    if dump_dict is not None:
        name = _type_name_of(type(value))
        return {_TYPE: name, _VALUE: encode(dump_dict())}
    raise SerializationError(
        f"cannot write a value of type {type(value).__module__}.{type(value).__qualname__} "
        "to JSON; register its class (register_class) or a codec (register_codec)"
    )


def _type_name_of(cls: type[Any]) -> str:
    name = _NAMES.get(cls)
    if name is not None:
        return name
    raise SerializationError(
        f"class {cls.__module__}.{cls.__qualname__} has dump_dict() but is not registered; "
        "decorate it with fhequant.serialization.register_class"
    )


def decode(data: Any, path: str = "$") -> Any:
    """Rebuild values from the JSON tree written by :func:`encode` (bottom-up).

    Args:
        data: parsed JSON.
        path: where ``data`` sits in the document (named in errors).

    Returns:
        The decoded value; tagged dicts become objects of registered classes or codec values.

    Raises:
        SerializationError: a value that does not decode, naming its place in the document
            (e.g. ``$.serialized_value.quantizer.serialized_value.scale``).
    """
    if path == "$":
        check_depth(data)
    if isinstance(data, list):
        return [decode(item, f"{path}[{i}]") for i, item in enumerate(data)]
    if not isinstance(data, dict):
        return data
    decoded = {k: decode(v, f"{path}.{k}") for k, v in data.items()}
    if _TYPE not in decoded or _VALUE not in decoded:
        return decoded
    type_name = decoded[_TYPE]
    if not isinstance(type_name, str):
        raise SerializationError(f"{path}.{_TYPE}: must be a string, got {type_name!r}")
    extra = sorted(set(decoded) - {_TYPE, _VALUE, _DTYPE})
    if extra:
        raise SerializationError(f"{path}: unexpected key(s) {extra} next to {_TYPE!r}")
    codec = _CODECS_BY_NAME.get(type_name)
    if codec is not None:
        loader: Callable[[], Any] = lambda: codec.decode(decoded[_VALUE], decoded.get(_DTYPE))  # noqa: E731
    else:
        cls = _CLASSES.get(type_name)
        if cls is None:
            raise SerializationError(
                f"{path}: unknown type_name {type_name!r} in JSON; known classes: "
                f"{sorted(_CLASSES)}. Import the module that defines it before loading"
            )
        if not isinstance(decoded[_VALUE], dict):
            raise SerializationError(
                f"{path}.{_VALUE}: a {type_name} is written as an object of fields, got "
                f"{type(decoded[_VALUE]).__name__}"
            )
        loader = lambda: cls.load_dict(decoded[_VALUE])  # noqa: E731
    try:
        return loader()
    except SerializationError as exc:
        raise SerializationError(f"{path} ({type_name}): {exc}") from exc
    except Exception as exc:  # any other failure of a loader is a bad document
        raise SerializationError(
            f"{path}: cannot rebuild a {type_name} from JSON ({type(exc).__name__}: {exc}); "
            "the document is damaged or was written by an incompatible version"
        ) from exc


# --- text and files ------------------------------------------------------------------------


def dumps(value: Any) -> str:
    """The JSON text of ``value`` (plain, without the version envelope).

    Args:
        value: anything :func:`encode` accepts.

    Returns:
        The text; byte-identical to the reference for quantizer objects.
    """
    return json.dumps(encode(value), ensure_ascii=True, allow_nan=True)


def wrap_versioned(value: Any) -> dict[str, Any]:
    """The versioned envelope ``{VERSION_KEY: FORMAT_VERSION, "content": encode(value)}``.

    Args:
        value: anything :func:`encode` accepts.

    Returns:
        A JSON-compatible dict.
    """
    return {VERSION_KEY: FORMAT_VERSION, _CONTENT_KEY: encode(value)}


def unwrap_versioned(data: Any) -> Any:
    """Return the document inside a versioned envelope, or ``data`` itself if it is plain.

    Args:
        data: parsed JSON.

    Returns:
        The (still encoded) document.

    Raises:
        SerializationError: the envelope has a version this fhequant cannot read.
    """
    if not isinstance(data, dict) or VERSION_KEY not in data or _TYPE in data:
        return data
    version = data[VERSION_KEY]
    if (
        isinstance(version, bool)
        or not isinstance(version, int)
        or version not in _SUPPORTED_VERSIONS
    ):
        raise SerializationError(
            f"JSON format version {version!r} is not supported (this fhequant reads "
            f"{sorted(_SUPPORTED_VERSIONS)}); upgrade fhequant or re-export the file"
        )
    if _CONTENT_KEY not in data:
        raise SerializationError(f"versioned JSON document has no {_CONTENT_KEY!r} key")
    return data[_CONTENT_KEY]


def dump(value: Any, file: IO[str]) -> None:
    """Write the same text as ``value.dumps()`` (or :func:`dumps`) to a text file.

    Quantizer objects write their plain, reference-identical text (docs/contract.md §1.6: ``dump``
    and ``dumps`` agree); classes whose ``dumps`` is versioned (the QuantizedModule) write the
    versioned envelope.

    Args:
        value: anything :func:`encode` accepts.
        file: an open text file.
    """
    file.write(value.dumps() if isinstance(value, Serializable) else dumps(value))


def loads(text: str | bytes) -> Any:
    """Read a value from JSON text (plain document or versioned envelope).

    Args:
        text: the JSON text.

    Returns:
        The decoded value.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SerializationError(f"the document is not UTF-8 text: {exc}") from exc
    if not isinstance(text, str):
        raise SerializationError(
            f"loads expects JSON text (str or bytes), got {type(text).__name__}"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SerializationError(f"not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise SerializationError(
            f"the document is nested too deeply (more than {MAX_DEPTH} levels are refused)"
        ) from exc
    return decode(unwrap_versioned(data))


def load(file: IO[str]) -> Any:
    """Read a value from a text file written by :func:`dump` (or holding a plain document).

    Args:
        file: an open text file.

    Returns:
        The decoded value.
    """
    return loads(file.read())


def _expect(cls: type[T], value: Any) -> T:
    if not isinstance(value, cls):
        raise SerializationError(
            f"JSON holds a {type(value).__qualname__}, not a {cls.__qualname__}; load it "
            "with fhequant.serialization.loads"
        )
    return value


class Serializable:
    """Base for classes written to JSON: subclasses define ``dump_dict`` and ``load_dict``.

    Subclasses are registered automatically under their class name, or under
    ``type_name`` given as a class keyword (``class Foo(Serializable, type_name="Bar")``).
    """

    def __init_subclass__(cls, type_name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_class(cls, type_name)

    def dump_dict(self) -> dict[str, Any]:
        """The fields to write, in order (values are encoded by the serializer)."""
        raise NotImplementedError(f"{type(self).__qualname__} must define dump_dict")

    @classmethod
    def load_dict(cls: type[S], metadata: dict[str, Any]) -> S:
        """Rebuild an object from the decoded fields written by ``dump_dict``."""
        raise NotImplementedError(f"{cls.__qualname__} must define load_dict")

    def dumps(self) -> str:
        """The JSON text of this object (plain, byte-identical to the reference)."""
        return dumps(self)

    def dump(self, file: IO[str]) -> None:
        """Write ``self.dumps()`` to a text file."""
        dump(self, file)

    @classmethod
    def loads(cls: type[S], text: str | bytes) -> S:
        """Read an object of this class from JSON text."""
        return _expect(cls, loads(text))

    @classmethod
    def load(cls: type[S], file: IO[str]) -> S:
        """Read an object of this class from a text file."""
        return _expect(cls, load(file))
