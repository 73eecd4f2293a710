"""Shape ops: re-quantize the input, then move its integers (SPEC §3.0).

The float implementation is dtype-agnostic, so it runs directly on the qvalues. Reshape,
Flatten, Transpose, Concat, Slice and Gather keep the input's (re-quantized) options, stats
and params; Unsqueeze, Squeeze and Expand use the op's output options with the input's stats
and params. Shape and ConstantOfShape have raw outputs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fhequant.errors import QuantizedOpError
from fhequant.quantization import QuantizedArray
from fhequant.quantized.ops.base import QuantizedOp

__all__ = [
    "ONNXConstantOfShape",
    "ONNXGather",
    "ONNXShape",
    "ONNXSlice",
    "QuantizedConcat",
    "QuantizedExpand",
    "QuantizedFlatten",
    "QuantizedReshape",
    "QuantizedSqueeze",
    "QuantizedTranspose",
    "QuantizedUnsqueeze",
]


class _ShapeOp(QuantizedOp):
    """Moves integers: never fusable; its tensor inputs are re-quantized first."""

    keep_input_options: ClassVar[bool] = True

    def can_fuse(self) -> bool:
        """Shape ops quantize their inputs: never fusable."""
        return False

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Run the float implementation on the integers of the (re-quantized) inputs.

        Args:
            *q_inputs: the variable inputs (QuantizedArrays or raw arrays).
            calibrate_rounding: unused.
            **attrs: attribute overrides.

        Returns:
            A QuantizedArray with the moved integers, or the raw result if every input is
            raw.
        """
        prepared = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        self._track("prepared_inputs", prepared)
        tensors = [p for p in prepared if isinstance(p, QuantizedArray)]
        if not tensors:
            return self.call_impl(*prepared, **self._merged_attrs(attrs))
        self._check_same_quantizer(tensors)
        moved = self.call_impl(
            *(p.qvalues if isinstance(p, QuantizedArray) else p for p in prepared),
            **self._merged_attrs(attrs),
        )
        q = tensors[0].quantizer
        options = q.quant_options if self.keep_input_options else self._get_output_quant_opts()
        return QuantizedArray(
            q.n_bits,
            moved,
            value_is_float=False,
            options=options,
            stats=q.quant_stats,
            params=q.quant_params,
        )

    def _check_same_quantizer(self, tensors: list[QuantizedArray]) -> None:
        if len(tensors) > 1:
            raise QuantizedOpError(
                f"{self._label()}: takes one quantized tensor, got {len(tensors)}"
            )


class QuantizedReshape(_ShapeOp):
    """Reshape (shape is a raw input)."""

    _impl_for_op_named = "Reshape"
    quantize_inputs_with_model_outputs_precision = True


class QuantizedFlatten(_ShapeOp):
    """Flatten to 2-D at ``axis``."""

    _impl_for_op_named = "Flatten"
    quantize_inputs_with_model_outputs_precision = True


class QuantizedTranspose(_ShapeOp):
    """Transpose by ``perm``."""

    _impl_for_op_named = "Transpose"
    quantize_inputs_with_model_outputs_precision = True


class QuantizedConcat(_ShapeOp):
    """Concatenation; every input must have the same scale and zero point."""

    _impl_for_op_named = "Concat"
    quantize_inputs_with_model_outputs_precision = True

    def _check_same_quantizer(self, tensors: list[QuantizedArray]) -> None:
        first = tensors[0].quantizer
        for i, t in enumerate(tensors[1:], start=1):
            q = t.quantizer
            if not (
                np.array_equal(q.scale, first.scale)
                and np.array_equal(q.zero_point, first.zero_point)
            ):
                raise QuantizedOpError(
                    f"{self._label()}: input {i} has scale {q.scale!r} and zero point "
                    f"{q.zero_point!r} but input 0 has {first.scale!r} and "
                    f"{first.zero_point!r}; all inputs must share one quantizer"
                )


class ONNXSlice(_ShapeOp):
    """Slice (starts, ends, axes, steps are raw inputs)."""

    _impl_for_op_named = "Slice"


class ONNXGather(_ShapeOp):
    """Gather with constant indices."""

    _impl_for_op_named = "Gather"


class QuantizedSqueeze(_ShapeOp):
    """Squeeze axes."""

    _impl_for_op_named = "Squeeze"
    quantize_inputs_with_model_outputs_precision = True
    keep_input_options = False


class QuantizedUnsqueeze(_ShapeOp):
    """Unsqueeze axes."""

    _impl_for_op_named = "Unsqueeze"
    quantize_inputs_with_model_outputs_precision = True
    keep_input_options = False


class QuantizedExpand(_ShapeOp):
    """Broadcast to a shape."""

    _impl_for_op_named = "Expand"
    quantize_inputs_with_model_outputs_precision = True
    keep_input_options = False


class ONNXShape(QuantizedOp):
    """The shape of the input, as a raw int64 array."""

    _impl_for_op_named = "Shape"

    def can_fuse(self) -> bool:
        """Raw output: not a TLU."""
        return False

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """The raw shape of the input.

        Args:
            *q_inputs: the input.
            calibrate_rounding: unused.
            **attrs: unused.

        Returns:
            An int64 array.
        """
        x = q_inputs[0]
        data = x.qvalues if isinstance(x, QuantizedArray) else x
        return self.call_impl(data)


class ONNXConstantOfShape(QuantizedOp):
    """A constant tensor of a (raw) shape; raw output."""

    _impl_for_op_named = "ConstantOfShape"

    def can_fuse(self) -> bool:
        """Raw output: not a TLU."""
        return False
