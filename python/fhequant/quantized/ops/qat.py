"""Brevitas / QONNX ``Quant`` nodes imported by QAT (docs/contract.md §3.8).

The float op is a fake quantization, clip before rint:
``(rint(clip(x/scale + zp, min_int, max_int)) - zp)·scale``. Its output quantizer is the
Brevitas one (scale, integer zp [FIX d], offset 2^(b-1) if signed), marked precomputed-QAT so
that consumers use its integers as they are.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from fhequant.errors import DTypeError, QuantizedOpError
from fhequant.quantization import QuantizedArray, UniformQuantizationParameters
from fhequant.quantized.ops.base import QuantizedOp

__all__ = ["QuantizedBrevitasQuant"]


def _value(v: Any) -> Any:
    return v.values if isinstance(v, QuantizedArray) else v


class QuantizedBrevitasQuant(QuantizedOp):
    """Brevitas fake quantization with its own (precomputed) quantizer (docs/contract.md §3.8)."""

    _impl_for_op_named = "onnx.brevitas.Quant"
    quantize_inputs_with_model_outputs_precision = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.attrs.get("rounding_mode") != "ROUND":
            raise QuantizedOpError(
                f"{self._label()}: rounding_mode={self.attrs.get('rounding_mode')!r} is not "
                "supported; only 'ROUND' is"
            )
        if int(self.attrs["signed"]) == 0 and int(self.attrs["narrow"]) == 1:
            self.attrs["signed"], self.attrs["narrow"] = 1, 0
        self.is_signed = bool(int(self.attrs["signed"]))
        self.is_narrow = bool(int(self.attrs["narrow"]))
        scale = self._float_constant(1, "scale")
        zero_point = self._float_constant(2, "zero_point")
        self.scale = np.float64(scale) if np.ndim(scale) == 0 else scale.astype(np.float64)
        zp = float(np.ravel(zero_point)[0]) if np.size(zero_point) == 1 else None
        if zp is None or not zp.is_integer():
            raise QuantizedOpError(
                f"{self._label()}: zero point {np.asarray(zero_point).tolist()} is not an "
                "integer; quantizers need an integer zero point"
            )
        self.zero_point = int(zp)
        bits = self.constant_inputs.get(3)
        b = None if bits is None else np.asarray(_value(bits))
        if b is None or b.size != 1 or not float(b.item()).is_integer():
            raise QuantizedOpError(
                f"{self._label()}: bit width {None if b is None else b.tolist()} is not an "
                "integer constant"
            )
        self.bit_width = int(b.item())
        opts = copy.deepcopy(self.input_quant_opts)
        opts.n_bits = self.bit_width
        opts.is_qat = True
        opts.is_precomputed_qat = True
        opts.is_narrow = self.is_narrow
        opts.is_signed = self.is_signed
        self.output_quant_opts = opts

    def _float_constant(self, index: int, name: str) -> Any:
        value = self.constant_inputs.get(index)
        arr = None if value is None else np.asarray(_value(value))
        if arr is None or not np.issubdtype(arr.dtype, np.floating):
            raise DTypeError(
                f"{self._label()}: the {name} input must be a float constant, got "
                f"{'a variable input' if arr is None else arr.dtype}"
            )
        return arr

    def _brevitas_params(self) -> UniformQuantizationParameters:
        offset = 2 ** (self.bit_width - 1) if self.is_signed else 0
        return UniformQuantizationParameters(
            scale=self.scale, zero_point=self.zero_point, offset=offset
        )

    def calibrate(self, *inputs: Any) -> Any:
        """Float calibration, then the Brevitas params replace the calibrated ones.

        Args:
            *inputs: the input tensor.

        Returns:
            The fake-quantized floats.
        """
        raw = super().calibrate(*inputs)
        self.output_quant_params = self._brevitas_params()
        return raw

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Fake-quantize the input floats with the Brevitas quantizer.

        Args:
            *q_inputs: the input tensor.
            calibrate_rounding: unused.
            **attrs: attribute overrides.

        Returns:
            The input itself if it is already quantized with these options, scale and zp;
            else a QuantizedArray at the Brevitas bit width.
        """
        x = q_inputs[0]
        if isinstance(x, QuantizedArray):
            q = x.quantizer
            if (
                q.quant_options.is_equal(self.output_quant_opts)
                and np.array_equal(q.scale, self.scale)
                and np.array_equal(q.zero_point, self.zero_point)
            ):
                return x
        prepared = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=False
        )
        f = self._float_tlu(prepared, q_inputs, self._merged_attrs(attrs))
        self._check_calibrated()
        return QuantizedArray(
            self.bit_width,
            f,
            value_is_float=True,
            options=self.output_quant_opts,
            stats=self.output_quant_stats,
            params=self.output_quant_params,
        )
