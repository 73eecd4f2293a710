"""The JSON form of a quantized op (docs/contract.md §6.3): every field of the instance, keys
sorted, constant input keys as strings; transient state (the debug tracker) is not kept."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from fhequant import serialization
from fhequant.errors import SerializationError
from fhequant.quantization import (
    MinMaxQuantizationStats,
    QuantizationOptions,
    UniformQuantizationParameters,
)
from fhequant.quantization.domain import is_flag, is_n_bits

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


def _check_op_fields(owner: str, metadata: dict[str, Any]) -> None:
    """The fields every op has, type-checked on load (docs/contract.md §1.6)."""
    check = serialization.field
    check(metadata, "n_bits", owner, is_n_bits, "an int in [1, 32]")
    check(metadata, "op_instance_name", owner, lambda v: isinstance(v, str), "a string")
    check(
        metadata, "_int_input_names", owner,
        lambda v: isinstance(v, (set, list)) and all(isinstance(n, str) for n in v),
        "a set of names",
    )  # fmt: skip
    check(
        metadata, "constant_inputs", owner,
        lambda v: isinstance(v, dict) and all(k.isdigit() for k in v),
        "an object keyed by input index",
    )  # fmt: skip
    check(metadata, "attrs", owner, lambda v: isinstance(v, dict), "an object")
    check(
        metadata, "input_quant_opts", owner, lambda v: isinstance(v, QuantizationOptions),
        "QuantizationOptions",
    )  # fmt: skip
    check(
        metadata, "output_quant_params", owner,
        lambda v: isinstance(v, UniformQuantizationParameters), "UniformQuantizationParameters",
        nullable=True,
    )  # fmt: skip
    check(
        metadata, "output_quant_stats", owner,
        lambda v: isinstance(v, MinMaxQuantizationStats), "MinMaxQuantizationStats",
        optional=True,
    )  # fmt: skip
    check(metadata, "produces_graph_output", owner, is_flag, "a bool", optional=True)


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
    _check_op_fields(cls.__name__, metadata)
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
