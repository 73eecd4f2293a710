"""The float side of a quantized op: its ONNX op's metadata and calibration implementation.

A thin view of ``fhequant.onnx.ONNX_OPS`` (the float op registry) in the form the quantized
layer needs: positional input names, how many are required, which are raw (shapes, axes,
indices: never quantized), the attribute defaults (``None`` where the node must set one) and
the docs/contract.md §5.3 implementation (``OpSpec.quant_fn``) used for calibration and float TLUs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fhequant.errors import UnsupportedOpError
from fhequant.onnx import ONNX_OPS, REQUIRED
from fhequant.onnx.ops_impl import REFERENCE_INPUT_NAMES

__all__ = ["FloatOpSpec", "float_spec"]


@dataclass(frozen=True)
class FloatOpSpec:
    """Metadata and float implementation of one ONNX op type (``reference_input_names``: the
    names Concrete ML gives the same inputs, ``fhequant.onnx.ops_impl``)."""

    op_type: str
    impl: Callable[..., Any]
    input_names: tuple[str, ...]
    n_required: int
    attr_defaults: Mapping[str, Any] = field(default_factory=dict)
    raw_inputs: frozenset[int] = frozenset()
    variadic: bool = False
    raw_output: bool = False
    reference_input_names: tuple[str, ...] = ()


@cache
def float_spec(op_type: str) -> FloatOpSpec:
    """The float spec of an ONNX op type.

    Args:
        op_type: the ONNX op type ("domain.op" for non-default domains).

    Returns:
        Its FloatOpSpec.

    Raises:
        UnsupportedOpError: the op type has no float implementation.
    """
    spec = ONNX_OPS.get(op_type)
    if spec is None:
        raise UnsupportedOpError(
            f"ONNX op {op_type!r} has no float implementation; available: {sorted(ONNX_OPS)}"
        )
    names = spec.input_names
    return FloatOpSpec(
        op_type=op_type,
        impl=spec.quant_fn,
        input_names=names,
        n_required=spec.n_required,
        attr_defaults={k: (None if v is REQUIRED else v) for k, v in spec.attrs.items()},
        raw_inputs=frozenset(spec.raw_input_indices(len(names))),
        variadic=spec.is_variadic,
        raw_output=spec.raw_output,
        reference_input_names=REFERENCE_INPUT_NAMES.get(op_type, ()),
    )
