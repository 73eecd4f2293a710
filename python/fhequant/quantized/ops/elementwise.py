"""Add, Sub, Mul and Div (docs/contract.md §3.3-§3.5).

Each is a float TLU when it depends on one encrypted tensor (or has a constant or raw operand)
and integer arithmetic on two encrypted tensors otherwise.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fhequant.errors import QuantizedOpError
from fhequant.quantization import QuantizedArray
from fhequant.quantized.ops.base import QuantizedOp
from fhequant.quantized.ops.mixing import QuantizedMixingOp

__all__ = ["QuantizedAdd", "QuantizedDiv", "QuantizedMul", "QuantizedSub"]


class _BinaryMixing(QuantizedMixingOp):
    """A binary op that is a TLU when fusable and integer math on two encrypted inputs."""

    def can_fuse(self) -> bool:
        """Fusable iff the op depends on one encrypted tensor."""
        return len(self._int_input_names) == 1

    def _float_path(self, q_inputs: tuple[Any, ...], attrs: dict[str, Any]) -> Any:
        """The TLU path: the float op on ``.values``; raw if every input is raw."""
        return QuantizedOp.q_impl(self, *q_inputs, **attrs)

    def _use_float_path(self, q_inputs: tuple[Any, ...]) -> bool:
        return (
            self.can_fuse()
            or len(self.constant_inputs) > 0
            or not all(isinstance(q, QuantizedArray) for q in q_inputs)
        )


class QuantizedAdd(_BinaryMixing):
    """a + b; two encrypted operands are rescaled to a common scale (docs/contract.md §3.3)."""

    _impl_for_op_named = "Add"
    sign: ClassVar[int] = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if len(self.constant_inputs) >= 2:
            raise QuantizedOpError(
                f"{self._label()}: both inputs are constants; fold the op before quantizing"
            )

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """a ± b: a float TLU, or the sum of both inputs rescaled to one scale (no clip).

        Args:
            *q_inputs: the variable inputs.
            calibrate_rounding: unused (Add/Sub never round).
            **attrs: attribute overrides.

        Returns:
            A QuantizedArray (at a graph output: the integer sum with scale S, zp 0), or a
            raw array when both inputs are raw.
        """
        if self._use_float_path(q_inputs):
            return self._float_path(q_inputs, attrs)
        self._check_calibrated()
        q0, q1 = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        self._track("prepared_inputs", [q0, q1])
        s0, s1 = q0.quantizer.scale, q1.quantizer.scale
        s_out = min(s0, s1) if self.produces_graph_output else self._calibrated_params().scale
        r0 = q0.quantizer.dequant(q0.qvalues)
        r1 = q1.quantizer.dequant(q1.qvalues)
        t0 = np.rint(r0 / s_out).astype(np.int64)
        t1 = np.rint(r1 / s_out).astype(np.int64)
        total = t0 + t1 if self.sign > 0 else t0 - t1
        self._track("accumulator", total)
        if self.produces_graph_output:
            return self.make_raw_accumulator_array(total, s_out, 0)
        return self.make_output_quant_array(s_out * total)


class QuantizedSub(QuantizedAdd):
    """a - b: Add with sign -1."""

    _impl_for_op_named = "Sub"
    sign: ClassVar[int] = -1


class QuantizedMul(_BinaryMixing):
    """a · b; two encrypted operands are multiplied in integers (docs/contract.md §3.4)."""

    _impl_for_op_named = "Mul"

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """a · b: a float TLU, or the zp-corrected integer product of both inputs.

        Args:
            *q_inputs: the variable inputs.
            calibrate_rounding: update lsbs_to_remove from this batch.
            **attrs: attribute overrides.

        Returns:
            A QuantizedArray; at a graph output the integer product P with scale s0·s1 and
            zp -z0·z1 [FIX c].
        """
        if self._use_float_path(q_inputs):
            return self._float_path(q_inputs, attrs)
        self._check_calibrated()
        q0, q1 = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        self._track("prepared_inputs", [q0, q1])
        z0, z1 = q0.quantizer.zero_point, q1.quantizer.zero_point
        x0 = self.cnp_round(q0.qvalues, calibrate_rounding, "input0_q_values_copy")
        x1 = self.cnp_round(q1.qvalues, calibrate_rounding, "input1_q_values_copy")
        ex = self.executor(x0, x1)
        x0, x1 = ex.copy(x0), ex.copy(x1)
        product = ex.multiply(x0, x1)
        if z0 != 0:
            product = ex.subtract(product, ex.multiply_constant(z0, x1))
        if z1 != 0:
            product = ex.subtract(product, ex.multiply_constant(z1, x0))
        scale = q0.quantizer.scale * q1.quantizer.scale
        if self.produces_graph_output:
            self._track("accumulator", product)
            return self.make_raw_accumulator_array(product, scale, -(z0 * z1))
        product = self.cnp_round(product, calibrate_rounding, "product_q_values")
        self._track("accumulator", product)
        return self.make_output_quant_array((product + z0 * z1) * scale)


class QuantizedDiv(_BinaryMixing):
    """a / b; two encrypted operands: a times a quantized 1/b (docs/contract.md §3.5)."""

    _impl_for_op_named = "Div"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_non_zero_value: Any = None
        self.divider_quantizer: Any = None

    def calibrate(self, *inputs: Any) -> Any:
        """Float calibration; two encrypted inputs also calibrate the 1/b quantizer.

        Args:
            *inputs: the variable inputs.

        Returns:
            The float result.
        """
        raw = super().calibrate(*inputs)
        if not self.can_fuse() and not self.constant_inputs and len(inputs) == 2:
            prepared = self._prepare_inputs_with_constants(
                *inputs, calibrate=True, quantize_actual_values=False
            )
            divider = np.asarray(prepared[1])
            non_zero = divider[divider != 0]
            if not non_zero.size:
                raise QuantizedOpError(
                    f"{self._label()}: the divisor is 0 in all the calibration data; encrypted "
                    "division needs a divisor that is not always 0"
                )
            # a divisor quantized to 0 (e.g. the sqrt(var + eps) of a decomposed LayerNorm at
            # 4 bits, positive in float) divides by the smallest non-zero value, as in q_impl
            smallest = non_zero.flat[int(np.argmin(np.abs(non_zero)))]
            self.min_non_zero_value = smallest
            safe = np.where(divider == 0, smallest, divider)
            self.divider_quantizer = QuantizedArray(self.n_bits, 1 / safe).quantizer
        return raw

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """a / b: a float TLU, or q0 times the quantized inverse of b.

        Args:
            *q_inputs: the variable inputs.
            calibrate_rounding: update lsbs_to_remove from this batch.
            **attrs: attribute overrides.

        Returns:
            A QuantizedArray; at a graph output the corrected product with scale s0·s_d and
            zp z0·z_d.
        """
        if self._use_float_path(q_inputs):
            return self._float_path(q_inputs, attrs)
        self._check_calibrated()
        if self.divider_quantizer is None:
            raise QuantizedOpError(
                f"{self._label()}: the divisor quantizer is not calibrated; calibrate with "
                "both encrypted inputs first"
            )
        q0, q1 = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        self._track("prepared_inputs", [q0, q1])
        dq = self.divider_quantizer
        z0, z_d = q0.quantizer.zero_point, dq.zero_point
        r1 = q1.quantizer.dequant(q1.qvalues)
        r1 = np.where(r1 == 0, self.min_non_zero_value, r1)
        q_inv = dq.quant(1 / r1)
        x0 = q0.qvalues
        ex = self.executor(x0, q_inv)
        product = ex.multiply(x0, q_inv)
        if z0 != 0:
            product = ex.subtract(product, ex.multiply_constant(z0, ex.add_constant(q_inv, -z_d)))
        if z_d != 0:
            product = ex.subtract(product, ex.multiply_constant(z_d, ex.add_constant(x0, -z0)))
        scale = q0.quantizer.scale * dq.scale
        if self.produces_graph_output:
            self._track("accumulator", product)
            return self.make_raw_accumulator_array(product, scale, z0 * z_d)
        product = self.cnp_round(product, calibrate_rounding, "single_rounding_op")
        self._track("accumulator", product)
        return self.make_output_quant_array((product - z0 * z_d) * scale)
