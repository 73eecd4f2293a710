"""``ONNX_OPS_TO_QUANTIZED_IMPL``: ONNX op type → quantized op class (SPEC §3.0)."""

from __future__ import annotations

from fhequant.quantized.ops import elementwise, linear, pooling, qat, shape, univariate
from fhequant.quantized.ops.base import QuantizedOp

__all__ = ["ONNX_OPS_TO_QUANTIZED_IMPL", "quantized_op_class"]

_MODULES = (univariate, linear, elementwise, pooling, shape, qat)


def _collect() -> dict[str, type[QuantizedOp]]:
    table: dict[str, type[QuantizedOp]] = {}
    for module in _MODULES:
        for name in module.__all__:
            cls = getattr(module, name)
            table[cls._impl_for_op_named] = cls
    return dict(sorted(table.items()))


#: ONNX op type → quantized class; each class wraps the float implementation of its op type.
ONNX_OPS_TO_QUANTIZED_IMPL: dict[str, type[QuantizedOp]] = _collect()


def quantized_op_class(op_type: str) -> type[QuantizedOp] | None:
    """The quantized class of an ONNX op type, or None if the op is not quantized.

    Args:
        op_type: the ONNX op type ("onnx.brevitas.Quant" for Brevitas Quant nodes).

    Returns:
        The class, or None.
    """
    return ONNX_OPS_TO_QUANTIZED_IMPL.get(op_type)
