"""Univariate ops: float table lookups of one encrypted tensor (docs/contract.md §2.3, §3.0, §3.7).

They take the ``.values`` (unquantized floats) of their inputs, run the float implementation
and quantize the result with the calibrated output quantizer; in a traced circuit each chain
of them fuses into one table lookup.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from fhequant.errors import QuantizedOpError
from fhequant.quantization import QuantizedArray
from fhequant.quantized.ops.base import QuantizedOp, quantized_values_copy

__all__ = [
    "QuantizedAbs",
    "QuantizedAcos",
    "QuantizedAcosh",
    "QuantizedAnd",
    "QuantizedAsin",
    "QuantizedAsinh",
    "QuantizedAtan",
    "QuantizedAtanh",
    "QuantizedBatchNormalization",
    "QuantizedCast",
    "QuantizedCeil",
    "QuantizedCelu",
    "QuantizedClip",
    "QuantizedCos",
    "QuantizedCosh",
    "QuantizedElu",
    "QuantizedEqual",
    "QuantizedErf",
    "QuantizedExp",
    "QuantizedFloor",
    "QuantizedGelu",
    "QuantizedGreater",
    "QuantizedGreaterOrEqual",
    "QuantizedHardSigmoid",
    "QuantizedHardSwish",
    "QuantizedIdentity",
    "QuantizedLeakyRelu",
    "QuantizedLess",
    "QuantizedLessOrEqual",
    "QuantizedLog",
    "QuantizedMax",
    "QuantizedMin",
    "QuantizedMish",
    "QuantizedMod",
    "QuantizedNeg",
    "QuantizedNot",
    "QuantizedOr",
    "QuantizedPRelu",
    "QuantizedPow",
    "QuantizedReciprocal",
    "QuantizedRelu",
    "QuantizedRound",
    "QuantizedSelu",
    "QuantizedSigmoid",
    "QuantizedSign",
    "QuantizedSin",
    "QuantizedSinh",
    "QuantizedSoftplus",
    "QuantizedSoftsign",
    "QuantizedSqrt",
    "QuantizedTan",
    "QuantizedTanh",
    "QuantizedWhere",
    "QuantizedXor",
]

#: ONNX Cast targets QuantizedCast takes (numeric and bool TensorProto types).
_CAST_TARGETS = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13})


def _onnx_type_name(to: Any) -> str:
    """The TensorProto name of an ONNX type number ("INT64"), for messages."""
    try:
        return str(onnx.TensorProto.DataType.Name(int(to)))
    except (TypeError, ValueError):
        return repr(to)


class QuantizedAbs(QuantizedOp):
    """|x|."""

    _impl_for_op_named = "Abs"
    calibrate_by_table = True


class QuantizedCast(QuantizedOp):
    """Cast of encrypted values: to BOOL/FLOAT/DOUBLE as float64 (docs/contract.md §5.3); to
    an integer type as the float64 of the cast integers (truncated toward zero, wrapped as
    ONNX casts wrap), so that the result can be quantized. Raw integer inputs (shapes, indices)
    are cast exactly."""

    _impl_for_op_named = "Cast"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        to = self.attrs.get("to")
        if to is None or int(to) not in _CAST_TARGETS:
            name = _onnx_type_name(to)
            raise QuantizedOpError(
                f"{self._label()}: Cast to {name} is not supported; the target type must be "
                f"one of {sorted(_onnx_type_name(t) for t in _CAST_TARGETS)}"
            )

    def call_impl(self, *inputs: Any, **attrs: Any) -> Any:
        """The float implementation; a float input cast to an integer type gives float64."""
        out = super().call_impl(*inputs, **attrs)
        in_kind = getattr(getattr(inputs[0], "dtype", None), "kind", "") if inputs else ""
        out_kind = getattr(getattr(out, "dtype", None), "kind", "")
        if in_kind == "f" and out_kind in ("i", "u"):
            return out.astype(np.float64)
        return out


class QuantizedCelu(QuantizedOp):
    """max(0, x) + min(0, alpha(e^{x/alpha} - 1))."""

    _impl_for_op_named = "Celu"
    calibrate_by_table = True


class QuantizedClip(QuantizedOp):
    """clip(x, min, max); min and max are inputs."""

    _impl_for_op_named = "Clip"
    calibrate_by_table = True


class QuantizedElu(QuantizedOp):
    """x if x > 0 else alpha(eˣ - 1)."""

    _impl_for_op_named = "Elu"
    calibrate_by_table = True


class QuantizedErf(QuantizedOp):
    """erf(x)."""

    _impl_for_op_named = "Erf"
    calibrate_by_table = True


class QuantizedExp(QuantizedOp):
    """eˣ."""

    _impl_for_op_named = "Exp"
    calibrate_by_table = True


class QuantizedFloor(QuantizedOp):
    """floor(x)."""

    _impl_for_op_named = "Floor"
    calibrate_by_table = True


class QuantizedHardSigmoid(QuantizedOp):
    """max(0, min(1, alphax + β))."""

    _impl_for_op_named = "HardSigmoid"
    calibrate_by_table = True


class QuantizedHardSwish(QuantizedOp):
    """x·max(0, min(1, x/6 + 0.5))."""

    _impl_for_op_named = "HardSwish"
    calibrate_by_table = True


class QuantizedLeakyRelu(QuantizedOp):
    """x if x > 0 else alphax."""

    _impl_for_op_named = "LeakyRelu"
    calibrate_by_table = True


class QuantizedLog(QuantizedOp):
    """log(max(x, 1e-8))."""

    _impl_for_op_named = "Log"
    calibrate_by_table = True


class QuantizedNeg(QuantizedOp):
    """-x."""

    _impl_for_op_named = "Neg"
    calibrate_by_table = True


class QuantizedNot(QuantizedOp):
    """logical not, as float64 0/1."""

    _impl_for_op_named = "Not"


class QuantizedPRelu(QuantizedOp):
    """min(0, slope·x) + max(0, x)."""

    _impl_for_op_named = "PRelu"


class QuantizedRelu(QuantizedOp):
    """max(x, 0)."""

    _impl_for_op_named = "Relu"
    calibrate_by_table = True
    monotone_table = True  # np.maximum(x, 0)


class QuantizedRound(QuantizedOp):
    """rint(x) (half to even)."""

    _impl_for_op_named = "Round"
    calibrate_by_table = True


class QuantizedSelu(QuantizedOp):
    """gamma·x if x > 0 else gamma·alpha(eˣ - 1)."""

    _impl_for_op_named = "Selu"
    calibrate_by_table = True


class QuantizedSigmoid(QuantizedOp):
    """exp(-logaddexp(0, -x))."""

    _impl_for_op_named = "Sigmoid"
    calibrate_by_table = True


class QuantizedSign(QuantizedOp):
    """sign(x)."""

    _impl_for_op_named = "Sign"
    calibrate_by_table = True


class QuantizedSoftplus(QuantizedOp):
    """log(eˣ + 1)."""

    _impl_for_op_named = "Softplus"
    calibrate_by_table = True


class QuantizedSoftsign(QuantizedOp):
    """x / (1 + |x|)."""

    _impl_for_op_named = "Softsign"
    calibrate_by_table = True


class QuantizedTanh(QuantizedOp):
    """tanh(x)."""

    _impl_for_op_named = "Tanh"
    calibrate_by_table = True


class QuantizedWhere(QuantizedOp):
    """c·t + (1 - c)·f."""

    _impl_for_op_named = "Where"


class QuantizedIdentity(QuantizedOp):
    """Identity: the output keeps the input's integers and quantizer."""

    _impl_for_op_named = "Identity"

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Return a copy of the input (its qvalues, options, stats and params).

        Args:
            *q_inputs: the single input.
            calibrate_rounding: unused.
            **attrs: unused.

        Returns:
            A QuantizedArray copy, or the raw input.
        """
        (x,) = self._slot_inputs(q_inputs)
        if isinstance(x, QuantizedArray):
            return quantized_values_copy(x)
        return x


class QuantizedBatchNormalization(QuantizedOp):
    """(x - mean)/sqrt(var + eps)·scale + bias on axis 1, as a float TLU (docs/contract.md §3.7)."""

    _impl_for_op_named = "BatchNormalization"
    clips_percentiles = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if int(self.attrs.get("training_mode", 0)) != 0:
            raise QuantizedOpError(
                f"{self._label()}: training_mode={self.attrs['training_mode']} is not "
                "supported; export the model in eval mode (training_mode=0)"
            )

    def _calibration_values(self, raw: Any, prepared: list[Any]) -> Any:
        scale, bias = prepared[1], prepared[2]
        if np.size(scale) > 1 or np.size(bias) > 1:
            lo = np.percentile(raw, 0.1)
            hi = np.percentile(raw, 99.9)
            return np.clip(raw, lo, hi)
        return raw


class _NeedsConstant(QuantizedOp):
    """A comparison: it may not compare two encrypted tensors (two integer producers, or two
    QuantizedArray inputs); constants and raw arrays (shape arithmetic) are allowed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if len(self.constant_inputs) < 1 and len(self.int_input_names) > 1:
            raise QuantizedOpError(
                f"{self._label()}: comparing two encrypted tensors is not supported; one "
                "input must be a constant"
            )

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """As QuantizedOp.q_impl, after checking that at most one input is encrypted."""
        encrypted = sum(isinstance(q, QuantizedArray) for q in q_inputs)
        if encrypted > 1 and len(self.int_input_names) > 1:
            raise QuantizedOpError(
                f"{self._label()}: comparing two encrypted tensors is not supported; one "
                "input must be a constant"
            )
        return super().q_impl(*q_inputs, calibrate_rounding=calibrate_rounding, **attrs)


class QuantizedEqual(_NeedsConstant):
    """x == y as float64 0/1."""

    _impl_for_op_named = "Equal"


class QuantizedGreater(_NeedsConstant):
    """x > y as float64 0/1."""

    _impl_for_op_named = "Greater"


class QuantizedGreaterOrEqual(_NeedsConstant):
    """x >= y as float64 0/1."""

    _impl_for_op_named = "GreaterOrEqual"


class QuantizedLess(_NeedsConstant):
    """x < y as float64 0/1."""

    _impl_for_op_named = "Less"


class QuantizedLessOrEqual(_NeedsConstant):
    """x <= y as float64 0/1."""

    _impl_for_op_named = "LessOrEqual"


class _UnivariateOfEncrypted(QuantizedOp):
    """Fusable iff one encrypted dependency; otherwise exactly one constant input (§2.3)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.can_fuse() and len(self.constant_inputs) != 1:
            raise QuantizedOpError(
                f"{self._label()}: depends on {len(self._int_input_names)} encrypted tensors "
                f"({sorted(self._int_input_names)}) with {len(self.constant_inputs)} constant "
                "input(s); the op only supports one encrypted operand and one constant"
            )

    def can_fuse(self) -> bool:
        """Fusable iff the op depends on exactly one encrypted tensor."""
        return len(self._int_input_names) == 1


class QuantizedMax(_UnivariateOfEncrypted):
    """Element-wise max."""

    _impl_for_op_named = "Max"


class QuantizedMin(_UnivariateOfEncrypted):
    """Element-wise min."""

    _impl_for_op_named = "Min"


class QuantizedOr(_UnivariateOfEncrypted):
    """Logical or, as float64 0/1."""

    _impl_for_op_named = "Or"


class QuantizedPow(_UnivariateOfEncrypted):
    """x ** y."""

    _impl_for_op_named = "Pow"


# --- more univariate functions: each one table lookup (issue 13) ---------------------------


class QuantizedAcos(QuantizedOp):
    """arccos(x), x clipped to [-1, 1]."""

    _impl_for_op_named = "Acos"
    calibrate_by_table = True


class QuantizedAcosh(QuantizedOp):
    """arccosh(x), x clipped to [1, inf)."""

    _impl_for_op_named = "Acosh"
    calibrate_by_table = True


class QuantizedAsin(QuantizedOp):
    """arcsin(x), x clipped to [-1, 1]."""

    _impl_for_op_named = "Asin"
    calibrate_by_table = True


class QuantizedAsinh(QuantizedOp):
    """arcsinh(x)."""

    _impl_for_op_named = "Asinh"
    calibrate_by_table = True


class QuantizedAtan(QuantizedOp):
    """arctan(x)."""

    _impl_for_op_named = "Atan"
    calibrate_by_table = True


class QuantizedAtanh(QuantizedOp):
    """arctanh(x), x clipped inside (-1, 1)."""

    _impl_for_op_named = "Atanh"
    calibrate_by_table = True


class QuantizedCeil(QuantizedOp):
    """ceil(x)."""

    _impl_for_op_named = "Ceil"
    calibrate_by_table = True


class QuantizedCos(QuantizedOp):
    """cos(x)."""

    _impl_for_op_named = "Cos"
    calibrate_by_table = True


class QuantizedCosh(QuantizedOp):
    """cosh(x)."""

    _impl_for_op_named = "Cosh"
    calibrate_by_table = True


class QuantizedGelu(QuantizedOp):
    """0.5·x·(1 + erf(x/√2)), or its tanh approximation."""

    _impl_for_op_named = "Gelu"
    calibrate_by_table = True


class QuantizedMish(QuantizedOp):
    """x·tanh(softplus(x))."""

    _impl_for_op_named = "Mish"
    calibrate_by_table = True


class QuantizedReciprocal(QuantizedOp):
    """1 / x (1 where x = 0, as Div)."""

    _impl_for_op_named = "Reciprocal"
    calibrate_by_table = True


class QuantizedSin(QuantizedOp):
    """sin(x)."""

    _impl_for_op_named = "Sin"
    calibrate_by_table = True


class QuantizedSinh(QuantizedOp):
    """sinh(x)."""

    _impl_for_op_named = "Sinh"
    calibrate_by_table = True


class QuantizedSqrt(QuantizedOp):
    """sqrt(x), x clipped to [0, inf)."""

    _impl_for_op_named = "Sqrt"
    calibrate_by_table = True


class QuantizedTan(QuantizedOp):
    """tan(x)."""

    _impl_for_op_named = "Tan"
    calibrate_by_table = True


class QuantizedAnd(_UnivariateOfEncrypted):
    """Logical and, as float64 0/1."""

    _impl_for_op_named = "And"


class QuantizedXor(_UnivariateOfEncrypted):
    """Logical xor, as float64 0/1."""

    _impl_for_op_named = "Xor"


class QuantizedMod(QuantizedOp):
    """a mod b: on raw (shape) integers as is; on one encrypted tensor with a constant
    divisor a float table lookup (np.fmod; ONNX requires fmod=1 for floats)."""

    _impl_for_op_named = "Mod"
