"""The JSON form of a quantized op (docs/contract.md §6.3): every field of the instance, keys
sorted, constant input keys as strings; transient state (the debug tracker) is not kept."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from fhequant.errors import SerializationError

if TYPE_CHECKING:
    from fhequant.quantized.ops.base import QuantizedOp

__all__ = ["dump_op_fields", "load_op_fields"]

_Op = TypeVar("_Op", bound="QuantizedOp")


def dump_op_fields(op: QuantizedOp) -> dict[str, Any]:
    """The fields of ``op`` to write (the serializer encodes the values).

    Args:
        op: the op.

    Returns:
        Its fields, keys sorted.
    """
    fields: dict[str, Any] = dict(vars(op))
    fields["_impl_for_op_named"] = op._impl_for_op_named
    fields["constant_inputs"] = {str(k): v for k, v in op.constant_inputs.items()}
    fields["debug_value_tracker"] = None  # transient (debug forward only)
    if "_rounding_threshold_bits" in fields:
        fields["rounding_threshold_bits"] = fields.pop("_rounding_threshold_bits")
    return dict(sorted(fields.items()))


def load_op_fields(cls: type[_Op], metadata: dict[str, Any]) -> _Op:
    """Rebuild an op of class ``cls`` from the fields written by :func:`dump_op_fields`.

    Args:
        cls: the op class.
        metadata: the decoded fields.

    Returns:
        The op (its constructor is not run: the fields are the op's whole state).

    Raises:
        SerializationError: the op type does not match the class.
    """
    impl = metadata.get("_impl_for_op_named")
    if impl != cls._impl_for_op_named:
        raise SerializationError(
            f"{cls.__name__}: the JSON describes op type {impl!r}, but this class "
            f"implements {cls._impl_for_op_named!r}"
        )
    op = cls.__new__(cls)
    for key, value in metadata.items():
        if key == "_impl_for_op_named":
            continue
        if key == "constant_inputs":
            value = {int(k): v for k, v in value.items()}
        elif key == "_int_input_names":
            value = set(value)
        setattr(op, key, value)
    return op
