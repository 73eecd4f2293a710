"""Shape ops: re-quantize the input, then move its integers (docs/contract.md §3.0).

The float implementation is dtype-agnostic, so it runs directly on the qvalues. Reshape,
Flatten, Transpose, Concat, Slice, Gather and GatherND keep the input's (re-quantized) options,
stats and params; Unsqueeze, Squeeze and Expand use the op's output options with the input's stats
and params. Shape and ConstantOfShape have raw outputs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fhequant.errors import QuantizedOpError
from fhequant.quantization import QuantizationOptions, QuantizedArray
from fhequant.quantized.exec import is_tracer
from fhequant.quantized.ops.base import QuantizedOp

__all__ = [
    "ONNXConstantOfShape",
    "ONNXGather",
    "ONNXGatherND",
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


def _ints(v: Any) -> list[int]:
    return [int(d) for d in np.ravel(v)]


def _reshape(data: Any, shape: list[int]) -> Any:
    """Reshape with an explicit target (a -1 resolved): tracers want explicit shapes."""
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1]))
        size = int(np.prod(data.shape))
        shape = [size // known if d == -1 else d for d in shape]
    return data.reshape(tuple(shape))


class _ShapeOp(QuantizedOp):
    """Moves integers: never fusable; its tensor inputs are re-quantized first."""

    keep_input_options: ClassVar[bool] = True
    requant_table_if_constant: ClassVar[tuple[int, ...] | None] = ()
    #: The float result holds every value of the one tensor input exactly once (a
    #: rearrangement): its min and max are the input's (the calibration walk's shortcut).
    moves_every_value: ClassVar[bool] = False

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
        return self._move_prepared(prepared, attrs)

    def _move_prepared(self, prepared: list[Any], attrs: dict[str, Any]) -> Any:
        """q_impl after the inputs are prepared (re-quantized)."""
        self._track("prepared_inputs", prepared)
        tensors = [p for p in prepared if isinstance(p, QuantizedArray)]
        if not tensors:
            return self.call_impl(*prepared, **self._merged_attrs(attrs))
        self._check_same_quantizer(tensors)
        q = tensors[0].quantizer
        options = q.quant_options if self.keep_input_options else self._get_output_quant_opts()
        narrow = self._move_narrow(prepared, tensors[0], attrs, options)
        if narrow is not None:
            return narrow
        moved = self.move(
            *(p.qvalues if isinstance(p, QuantizedArray) else p for p in prepared),
            **self._merged_attrs(attrs),
        )
        return QuantizedArray(
            q.n_bits,
            moved,
            value_is_float=False,
            options=options,
            stats=q.quant_stats,
            params=q.quant_params,
            defer=True,  # the floats only when read
        )

    def _move_narrow(
        self,
        prepared: list[Any],
        tensor: QuantizedArray,
        attrs: dict[str, Any],
        options: QuantizationOptions,
    ) -> QuantizedArray | None:
        """The result kept narrow, or None: when the op moves every value exactly once
        (``moves_every_value``) and its tensor input holds its integers in int8/int16
        (:meth:`QuantizedArray.narrow_qvalues`, as the calibration's tables and fused kernels
        write them), the moved integers stay in that dtype with the input's min and max,
        instead of being widened to int64 and copied at eight times the size."""
        if not self.moves_every_value:
            return None
        ints = tensor.narrow_qvalues()
        if not isinstance(ints, np.ndarray) or ints.dtype == np.int64:
            return None
        parts = tensor.narrow_parts()  # held with the array: nothing computed
        if parts is None:
            return None
        moved = self.move(
            *(ints if p is tensor else p for p in prepared), **self._merged_attrs(attrs)
        )
        q = tensor.quantizer
        return QuantizedArray.from_narrow(
            q.n_bits,
            np.array(moved, copy=True),  # its own: the input may be a buffer reused per block
            parts[1],
            parts[2],
            options=options,
            stats=q.quant_stats,
            params=q.quant_params,
        )

    def move(self, *inputs: Any, **attrs: Any) -> Any:
        """Move the integers (arrays or tracers); by default the float implementation."""
        return self.call_impl(*inputs, **attrs)

    def _check_same_quantizer(self, tensors: list[QuantizedArray]) -> None:
        if len(tensors) > 1:
            raise QuantizedOpError(
                f"{self._label()}: takes one quantized tensor, got {len(tensors)}"
            )


class QuantizedReshape(_ShapeOp):
    """Reshape (shape is a raw input)."""

    _impl_for_op_named = "Reshape"
    quantize_inputs_with_model_outputs_precision = True
    moves_every_value = True
    narrow_inputs = True

    def move(self, data: Any, shape: Any, **attrs: Any) -> Any:
        """Reshape the integers (a 0 copies the input dim unless allowzero)."""
        target = _ints(shape)
        if not attrs.get("allowzero", 0):
            target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return _reshape(data, target)


class QuantizedFlatten(_ShapeOp):
    """Flatten to 2-D at ``axis``."""

    _impl_for_op_named = "Flatten"
    quantize_inputs_with_model_outputs_precision = True
    moves_every_value = True
    narrow_inputs = True

    def move(self, data: Any, **attrs: Any) -> Any:
        """Flatten the integers to 2-D at ``axis``."""
        ndim = len(data.shape)
        axis = int(attrs.get("axis", 1))
        axis = axis + ndim if axis < 0 else axis
        lead = int(np.prod(data.shape[:axis])) if axis else 1
        return data.reshape((lead, int(np.prod(data.shape)) // max(lead, 1)))


class QuantizedTranspose(_ShapeOp):
    """Transpose by ``perm``."""

    _impl_for_op_named = "Transpose"
    quantize_inputs_with_model_outputs_precision = True
    moves_every_value = True
    narrow_inputs = True


class QuantizedConcat(_ShapeOp):
    """Concatenation of tensors on one quantizer (docs/contract.md §3.0).

    When the re-quantized inputs share one scale and zero point, their integers are moved as
    they are and keep that quantizer. Otherwise (branches calibrated apart, e.g. DenseNet or
    ShuffleNet) every input is brought onto the op's output quantizer, calibrated on the
    union of the inputs: an input already on it passes through, any other is quantized from
    its dequantized values (one table lookup per such input once traced); the integers are
    then concatenated.
    """

    _impl_for_op_named = "Concat"
    quantize_inputs_with_model_outputs_precision = True
    # q_impl may read the producers' own integers (to re-quantize each input once)
    requant_table_if_constant = None

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Move the integers of inputs sharing one quantizer, else bring every input onto
        the output quantizer first.

        Args:
            *q_inputs: the variable inputs (QuantizedArrays or raw arrays).
            calibrate_rounding: unused.
            **attrs: attribute overrides.

        Returns:
            A QuantizedArray of the concatenated integers.
        """
        prepared = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        tensors = [p for p in prepared if isinstance(p, QuantizedArray)]
        if not tensors or self._share_quantizer(tensors):
            return self._move_prepared(prepared, attrs)
        return self._onto_output_quantizer(self._slot_inputs(q_inputs), attrs)

    def _check_same_quantizer(self, tensors: list[QuantizedArray]) -> None:
        """Checked by q_impl (``_share_quantizer``) before the integers are moved."""

    @staticmethod
    def _share_quantizer(tensors: list[QuantizedArray]) -> bool:
        first = tensors[0].quantizer
        return all(
            np.array_equal(t.quantizer.scale, first.scale)
            and np.array_equal(t.quantizer.zero_point, first.zero_point)
            for t in tensors[1:]
        )

    def _on_output_quantizer(self, q: QuantizedArray) -> bool:
        params = self._calibrated_params()
        z = q.quantizer
        return (
            z.n_bits == self.n_bits
            and np.array_equal(z.scale, params.scale)
            and np.array_equal(z.zero_point, params.zero_point)
            and z.quant_options.is_equal(self._get_output_quant_opts(), ignore_sign_qat=True)
        )

    def _onto_output_quantizer(self, slots: list[Any], attrs: dict[str, Any]) -> QuantizedArray:
        self._check_calibrated()
        ints = []
        for value in slots:
            if isinstance(value, QuantizedArray) and self._on_output_quantizer(value):
                ints.append(value.qvalues)
            else:
                floats = value.values if isinstance(value, QuantizedArray) else value
                ints.append(self.make_output_quant_array(floats).qvalues)
        self._track("prepared_inputs", ints)
        moved = self.move(*ints, **self._merged_attrs(attrs))
        return QuantizedArray(
            self.n_bits,
            moved,
            value_is_float=False,
            options=self._get_output_quant_opts(),
            stats=self.output_quant_stats,
            params=self.output_quant_params,
            defer=True,
        )


class ONNXSlice(_ShapeOp):
    """Slice (starts, ends, axes, steps are raw inputs)."""

    _impl_for_op_named = "Slice"

    def move(
        self, data: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None, **_: Any
    ) -> Any:
        """Slice the integers (bounds clamped to the shape, as ONNX does)."""
        ndim = len(data.shape)
        st, en = _ints(starts), _ints(ends)
        ax = list(range(len(st))) if axes is None else [a % ndim for a in _ints(axes)]
        sp = [1] * len(st) if steps is None else _ints(steps)
        index: list[Any] = [slice(None)] * ndim
        for start, end, axis, step in zip(st, en, ax, sp, strict=True):
            index[axis] = slice(*slice(start, end, step).indices(int(data.shape[axis])))
        return data[tuple(index)]


class ONNXGather(_ShapeOp):
    """Gather with constant indices."""

    _impl_for_op_named = "Gather"

    def move(self, data: Any, indices: Any, **attrs: Any) -> Any:
        """Gather integers along ``axis`` with constant indices."""
        ndim = len(data.shape)
        axis = int(attrs.get("axis", 0)) % ndim
        idx = np.asarray(indices, dtype=np.int64)
        idx = np.where(idx < 0, idx + int(data.shape[axis]), idx)
        index: list[Any] = [slice(None)] * ndim
        index[axis] = int(idx) if idx.ndim == 0 else idx
        return data[tuple(index)]


class ONNXGatherND(_ShapeOp):
    """GatherND with constant indices and batch_dims 0 (torch's default exporter writes
    AdaptiveAvgPool2d to a larger output this way)."""

    _impl_for_op_named = "GatherND"

    def move(self, data: Any, indices: Any, **attrs: Any) -> Any:
        """Gather integer sub-tensors addressed by the last axis of constant indices."""
        if int(attrs.get("batch_dims", 0)):
            raise QuantizedOpError(
                f"{self._label()}: GatherND with batch_dims {attrs['batch_dims']} is not "
                "supported in a quantized model (batch_dims 0 is)"
            )
        idx = np.asarray(indices, dtype=np.int64)
        k = idx.shape[-1]
        dims = np.array([int(d) for d in data.shape[:k]], dtype=np.int64)
        idx = np.where(idx < 0, idx + dims, idx)
        return data[tuple(np.moveaxis(idx, -1, 0))]


class QuantizedSqueeze(_ShapeOp):
    """Squeeze axes."""

    _impl_for_op_named = "Squeeze"
    quantize_inputs_with_model_outputs_precision = True
    moves_every_value = True
    narrow_inputs = True
    keep_input_options = False

    def move(self, data: Any, axes: Any = None, **_: Any) -> Any:
        """Drop size-1 axes (all of them when axes is None)."""
        ndim = len(data.shape)
        drop = (
            {i for i, d in enumerate(data.shape) if d == 1}
            if axes is None
            else {a % ndim for a in _ints(axes)}
        )
        return data.reshape(tuple(d for i, d in enumerate(data.shape) if i not in drop))


class QuantizedUnsqueeze(_ShapeOp):
    """Unsqueeze axes."""

    _impl_for_op_named = "Unsqueeze"
    quantize_inputs_with_model_outputs_precision = True
    moves_every_value = True
    narrow_inputs = True
    keep_input_options = False

    def move(self, data: Any, axes: Any, **_: Any) -> Any:
        """Insert size-1 axes."""
        new_axes = _ints(axes)
        ndim = len(data.shape) + len(new_axes)
        shape = [int(d) for d in data.shape]
        for a in sorted(a % ndim for a in new_axes):
            shape.insert(a, 1)
        return data.reshape(tuple(shape))


class QuantizedExpand(_ShapeOp):
    """Broadcast to a shape."""

    _impl_for_op_named = "Expand"
    quantize_inputs_with_model_outputs_precision = True
    keep_input_options = False

    def move(self, data: Any, shape: Any, **_: Any) -> Any:
        """Broadcast the integers to a shape (numpy broadcasting rules, as ONNX)."""
        out = np.broadcast_shapes(tuple(int(d) for d in data.shape), tuple(_ints(shape)))
        return np.broadcast_to(data, out)


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
        if is_tracer(data):  # a traced shape is static: no numpy function reaches concrete
            data = np.broadcast_to(np.int64(0), tuple(int(d) for d in data.shape))
        return self.call_impl(data)


class ONNXConstantOfShape(QuantizedOp):
    """A constant tensor of a (raw) shape; raw output."""

    _impl_for_op_named = "ConstantOfShape"

    def can_fuse(self) -> bool:
        """Raw output: not a TLU."""
        return False
