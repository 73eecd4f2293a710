"""``ONNX_OPS_TO_QUANTIZED_IMPL``: ONNX op type → quantized op class (docs/contract.md §3.0).

An op class registers itself when its class statement runs (``QuantizedOp.__init_subclass__``
calls :func:`op_type_to_register` and :func:`register_op`): a subclass whose body sets
``_impl_for_op_named`` is the quantized implementation of that ONNX op type. Classes whose body
does not set it (``QuantizedOp``, ``QuantizedMixingOp`` and intermediate bases such as the
shape ops' ``_ShapeOp``) are not registered. Two classes may not claim the same op type, and the
op type must have a float implementation in ``fhequant.onnx.ONNX_OPS``; both are checked when
the class is defined (``OpRegistrationError``).

Tests that define op classes of their own wrap them in :func:`isolated_op_registry`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from fhequant.errors import OpRegistrationError, UnsupportedOpError
from fhequant.quantized.ops.float_specs import float_spec
from fhequant.serialization import isolated_class_registry

if TYPE_CHECKING:
    from fhequant.quantized.ops.base import QuantizedOp

__all__ = [
    "ONNX_OPS_TO_QUANTIZED_IMPL",
    "isolated_op_registry",
    "op_type_to_register",
    "quantized_op_class",
    "register_op",
]

#: ONNX op type → quantized class, sorted by op type; each class wraps the float
#: implementation of its op type. Filled as the op classes are defined: read it, never write it.
ONNX_OPS_TO_QUANTIZED_IMPL: dict[str, type[QuantizedOp]] = {}


def _same_class(a: type, b: type) -> bool:
    """The same class, or the same class statement run again (a module reload)."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def op_type_to_register(cls: type[QuantizedOp]) -> str | None:
    """The ONNX op type ``cls`` is to be registered under, or None for a class that declares
    none (an abstract or intermediate base).

    Args:
        cls: a QuantizedOp subclass being defined.

    Returns:
        The op type its body sets in ``_impl_for_op_named``, or None.

    Raises:
        OpRegistrationError: the op type is empty, has no float implementation, or is already
            registered for another class.
    """
    if "_impl_for_op_named" not in vars(cls):
        return None
    op_type = vars(cls)["_impl_for_op_named"]
    where = f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(op_type, str) or not op_type:
        raise OpRegistrationError(
            f"{where}: _impl_for_op_named must be a non-empty ONNX op type, got {op_type!r}"
        )
    try:
        float_spec(op_type)
    except UnsupportedOpError as exc:
        raise OpRegistrationError(
            f"{where} implements ONNX op {op_type!r}, which has no float implementation in "
            "fhequant.onnx.ONNX_OPS: register one there first"
        ) from exc
    previous = ONNX_OPS_TO_QUANTIZED_IMPL.get(op_type)
    if previous is not None and not _same_class(previous, cls):
        raise OpRegistrationError(
            f"{where} implements ONNX op {op_type!r}, already implemented by "
            f"{previous.__module__}.{previous.__qualname__}: one class per op type (subclass "
            "it without setting _impl_for_op_named to reuse its code)"
        )
    return op_type


def register_op(op_type: str, cls: type[QuantizedOp]) -> None:
    """Record ``cls`` as the quantized class of ``op_type`` (checked by
    :func:`op_type_to_register`), keeping the registry sorted by op type."""
    table = {**ONNX_OPS_TO_QUANTIZED_IMPL, op_type: cls}
    ONNX_OPS_TO_QUANTIZED_IMPL.clear()
    ONNX_OPS_TO_QUANTIZED_IMPL.update(sorted(table.items()))


@contextlib.contextmanager
def isolated_op_registry() -> Iterator[Mapping[str, type[QuantizedOp]]]:
    """A scope for op classes defined by tests.

    Op classes defined inside the block are registered (for ONNX and for JSON) while it lasts,
    so graphs using their op type quantize and their ops serialize; when it ends both registries
    are exactly what they were before, whatever happened inside.

    Yields:
        The live registry.
    """
    saved = dict(ONNX_OPS_TO_QUANTIZED_IMPL)
    with isolated_class_registry():
        try:
            yield ONNX_OPS_TO_QUANTIZED_IMPL
        finally:
            ONNX_OPS_TO_QUANTIZED_IMPL.clear()
            ONNX_OPS_TO_QUANTIZED_IMPL.update(saved)


def quantized_op_class(op_type: str) -> type[QuantizedOp] | None:
    """The quantized class of an ONNX op type, or None if the op is not quantized.

    Args:
        op_type: the ONNX op type ("onnx.brevitas.Quant" for Brevitas Quant nodes).

    Returns:
        The class, or None.
    """
    return ONNX_OPS_TO_QUANTIZED_IMPL.get(op_type)
