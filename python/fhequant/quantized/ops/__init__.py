"""Quantized ONNX ops (docs/contract.md §2, §3), grouped by family; see ``base`` for the op
contract."""

from __future__ import annotations

from fhequant.quantized.exec import CLEAR, TRACING, Executor, executor_for, use_executor
from fhequant.quantized.ops.base import (
    DEFAULT_MODEL_BITS,
    QuantizedOp,
    compute_bits_precision,
    normalize_rounding_threshold_bits,
)
from fhequant.quantized.ops.elementwise import *  # noqa: F403
from fhequant.quantized.ops.elementwise import __all__ as _elementwise_all
from fhequant.quantized.ops.linear import *  # noqa: F403
from fhequant.quantized.ops.linear import __all__ as _linear_all
from fhequant.quantized.ops.mixing import QuantizedMixingOp
from fhequant.quantized.ops.normalization import *  # noqa: F403
from fhequant.quantized.ops.normalization import __all__ as _normalization_all
from fhequant.quantized.ops.pooling import *  # noqa: F403
from fhequant.quantized.ops.pooling import __all__ as _pooling_all
from fhequant.quantized.ops.qat import *  # noqa: F403
from fhequant.quantized.ops.qat import __all__ as _qat_all
from fhequant.quantized.ops.registry import ONNX_OPS_TO_QUANTIZED_IMPL, quantized_op_class
from fhequant.quantized.ops.shape import *  # noqa: F403
from fhequant.quantized.ops.shape import __all__ as _shape_all
from fhequant.quantized.ops.univariate import *  # noqa: F403
from fhequant.quantized.ops.univariate import __all__ as _univariate_all

__all__ = [
    "CLEAR",
    "DEFAULT_MODEL_BITS",
    "ONNX_OPS_TO_QUANTIZED_IMPL",
    "TRACING",
    "Executor",
    "QuantizedMixingOp",
    "QuantizedOp",
    "compute_bits_precision",
    "executor_for",
    "normalize_rounding_threshold_bits",
    "quantized_op_class",
    "use_executor",
    *_linear_all,
    *_shape_all,
    *_qat_all,
    *_pooling_all,
    *_elementwise_all,
    *_univariate_all,
    *_normalization_all,
]
