"""AveragePool, MaxPool, Pad, Unfold and ReduceSum on integers (docs/contract.md §3.6).

Spatial ops pad the integer input with its zero point, so a padded cell dequantizes to 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant import kernels as ik
from fhequant.errors import QuantizedOpError
from fhequant.quantization import QuantizedArray
from fhequant.quantized.ops.base import QuantizedOp, quantized_values_copy
from fhequant.quantized.ops.mixing import QuantizedMixingOp

__all__ = [
    "QuantizedAvgPool",
    "QuantizedMaxPool",
    "QuantizedPad",
    "QuantizedReduceSum",
    "QuantizedUnfold",
]


def _raw(v: Any) -> Any:
    return v.values if isinstance(v, QuantizedArray) else v


def _window_attrs(
    op: QuantizedOp,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    """kernel_shape, strides and ONNX pads [h_b, w_b, h_e, w_e] of a 2-D window op."""
    ks = op.attrs.get("kernel_shape")
    if ks is None or len(ks) != 2:
        raise QuantizedOpError(
            f"{op._label()}: kernel_shape must have two entries (2-D), got {ks!r}"
        )
    st = op.attrs.get("strides") or [1, 1]
    pd = op.attrs.get("pads") or [0, 0, 0, 0]
    if len(st) != 2 or len(pd) != 4:
        raise QuantizedOpError(
            f"{op._label()}: strides {list(st)} / pads {list(pd)} do not describe a 2-D "
            "window; give 2 strides and 4 pads"
        )
    return (
        (int(ks[0]), int(ks[1])),
        (int(st[0]), int(st[1])),
        (int(pd[0]), int(pd[1]), int(pd[2]), int(pd[3])),
    )


def _avgpool_norm(
    hw: tuple[int, ...],
    k: tuple[int, int],
    s: tuple[int, int],
    p: tuple[int, int, int, int],
    ceil: int,
) -> Any:
    """kh·kw, or in ceil mode the cells of each window that are not ceil extension."""
    if not ceil or ik.ceil_mode_extension(hw, k, s, p) == (0, 0):
        return k[0] * k[1]
    ones = np.ones((1, 1, *hw), dtype=np.int64)
    return ik.window_sum(ones, k, s, p, 1, ceil_mode=1)


def _check_attr(op: QuantizedOp, name: str, allowed: tuple[Any, ...]) -> None:
    value = op.attrs.get(name)
    if value not in allowed:
        raise QuantizedOpError(
            f"{op._label()}: {name}={value!r} is not supported; use one of {list(allowed)}"
        )


def _scalar_zp(op: QuantizedOp, q: QuantizedArray) -> int:
    z = q.quantizer.zero_point
    if np.ndim(z) != 0:
        raise QuantizedOpError(
            f"{op._label()}: the input zero point must be a scalar, got shape {np.shape(z)}"
        )
    return int(z)


class QuantizedAvgPool(QuantizedMixingOp):
    """2-D average pooling: an integer window sum times 1/norm (docs/contract.md §3.6)."""

    _impl_for_op_named = "AveragePool"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_attr(self, "auto_pad", ("NOTSET",))
        _check_attr(self, "count_include_pad", (1,))
        _check_attr(self, "ceil_mode", (0, 1))
        _window_attrs(self)

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Sum each window of the zp-padded integers, round, rescale by s_x/norm.

        Args:
            *q_inputs: the encrypted input.
            calibrate_rounding: update lsbs_to_remove from this batch.
            **attrs: unused.

        Returns:
            The calibrated QuantizedArray of the averages.
        """
        (q_x,) = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        self._track("prepared_inputs", [q_x])
        k, s, p = _window_attrs(self)
        z_x = _scalar_zp(self, q_x)
        x = q_x.qvalues
        ceil = int(self.attrs["ceil_mode"])
        ex = self.executor(x)
        total = ex.window_sum(x, k, s, p, z_x, ceil)
        total = self.cnp_round(total, calibrate_rounding, "single_rounding_op")
        self._track("accumulator", total)
        norm = _avgpool_norm(tuple(int(d) for d in x.shape[-2:]), k, s, p, ceil)
        v = (total.astype(np.float64) * (1.0 / norm) - z_x) * q_x.quantizer.scale
        return self.make_output_quant_array(v)


class QuantizedMaxPool(QuantizedOp):
    """2-D max pooling of the zp-padded integers (non-fusable, docs/contract.md §3.6)."""

    _impl_for_op_named = "MaxPool"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_attr(self, "auto_pad", ("NOTSET",))
        _check_attr(self, "ceil_mode", (0,))
        _check_attr(self, "storage_order", (0,))
        dil = self.attrs.get("dilations")
        if dil is not None and any(int(d) != 1 for d in dil):
            raise QuantizedOpError(
                f"{self._label()}: dilations={list(dil)} are not supported; use dilation 1"
            )
        _window_attrs(self)

    def can_fuse(self) -> bool:
        """MaxPool compares encrypted values of a window: never fusable."""
        return False

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Max of each window of the zp-padded integers, then rescale.

        Args:
            *q_inputs: the encrypted input.
            calibrate_rounding: unused.
            **attrs: unused.

        Returns:
            The calibrated QuantizedArray of the maxima.
        """
        (q_x,) = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        self._track("prepared_inputs", [q_x])
        k, s, p = _window_attrs(self)
        z_x = _scalar_zp(self, q_x)
        pooled = self.executor(q_x.qvalues).maxpool(q_x.qvalues, k, s, p, z_x)
        v = (pooled.astype(np.float64) - z_x) * q_x.quantizer.scale
        return self.make_output_quant_array(v)


class QuantizedPad(QuantizedOp):
    """Constant zero padding of H/W, done on integers with the zero point
    (docs/contract.md §3.6)."""

    _impl_for_op_named = "Pad"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_attr(self, "mode", ("constant",))
        if 1 in self.constant_inputs:
            self._hw_pads(self.constant_inputs[1])
        value = self.constant_inputs.get(2)
        if value is not None and np.any(np.asarray(_raw(value)) != 0):
            raise QuantizedOpError(
                f"{self._label()}: pad value {np.asarray(_raw(value)).tolist()} is not "
                "supported; only 0 is"
            )

    def can_fuse(self) -> bool:
        """Pad moves integers: never fusable."""
        return False

    def _hw_pads(self, pads: Any) -> tuple[int, int, int, int]:
        p = [int(v) for v in np.ravel(_raw(pads))]
        if len(p) == 4:
            return p[0], p[1], p[2], p[3]
        if len(p) == 8 and p[0] == p[1] == p[4] == p[5] == 0:
            return p[2], p[3], p[6], p[7]
        raise QuantizedOpError(
            f"{self._label()}: pads {p} are not supported; give 4 pads, or 8 that pad only "
            "H and W (N and C pads 0)"
        )

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Pad the integers with the input zero point; the quantizer is kept.

        Args:
            *q_inputs: the input (and pads if not constant).
            calibrate_rounding: unused.
            **attrs: unused.

        Returns:
            A QuantizedArray with the input's options, stats and params.
        """
        prepared = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        q_x = prepared[0]
        if not isinstance(q_x, QuantizedArray):
            return self.call_impl(*prepared, **self.attrs)
        p = self._hw_pads(prepared[1])
        z_x = _scalar_zp(self, q_x)
        padded = self.executor(q_x.qvalues).pad(q_x.qvalues, p, z_x)
        return quantized_values_copy(q_x, padded)


class QuantizedUnfold(QuantizedMixingOp):
    """Sliding blocks (N, C·kh·kw, L) via a grouped identity-kernel conv (docs/contract.md §3.6)."""

    _impl_for_op_named = "Unfold"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _window_attrs(self)

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Extract the zp-padded integer blocks, then rescale; no rounding.

        Args:
            *q_inputs: the encrypted input.
            calibrate_rounding: unused.
            **attrs: unused.

        Returns:
            The calibrated QuantizedArray of the blocks.
        """
        (q_x,) = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        k, s, p = _window_attrs(self)
        z_x = _scalar_zp(self, q_x)
        blocks = self.executor(q_x.qvalues).unfold(q_x.qvalues, k, s, p, z_x)
        v = (blocks.astype(np.float64) - z_x) * q_x.quantizer.scale
        return self.make_output_quant_array(v)


class QuantizedReduceSum(QuantizedMixingOp):
    """Sum over non-batch axes: sum(q) - n·z_x, rescaled by s_x (docs/contract.md §3.6)."""

    _impl_for_op_named = "ReduceSum"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.copy_inputs = False
        axes = self.constant_inputs.get(1)
        if axes is not None and any(int(a) == 0 for a in np.ravel(_raw(axes))):
            raise QuantizedOpError(
                f"{self._label()}: summing over axis 0 (the batch axis) is not supported"
            )

    def _axes(self, ndim: int, axes: Any) -> tuple[int, ...]:
        if axes is None or np.size(axes) == 0:
            if self.attrs.get("noop_with_empty_axes", 0):
                return ()
            result = tuple(range(ndim))
        else:
            result = tuple(sorted(int(a) % ndim for a in np.ravel(_raw(axes))))
        if 0 in result:
            raise QuantizedOpError(
                f"{self._label()}: summing over axis 0 (the batch axis) is not supported; "
                f"axes resolve to {list(result)}"
            )
        return result

    def calibrate(self, *inputs: Any) -> Any:
        """Float calibration; rejects a sum over the batch axis.

        Args:
            *inputs: the variable inputs.

        Returns:
            The float sums.
        """
        prepared = self._prepare_inputs_with_constants(
            *inputs, calibrate=True, quantize_actual_values=False
        )
        self._axes(np.ndim(prepared[0]), prepared[1] if len(prepared) > 1 else None)
        return super().calibrate(*inputs)

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Integer sum minus n·z_x (rounded when hidden), rescaled by s_x.

        Args:
            *q_inputs: the encrypted input (and axes if not constant).
            calibrate_rounding: update lsbs_to_remove from this batch.
            **attrs: unused.

        Returns:
            A QuantizedArray; at a graph output the raw sum with scale s_x and zp n·z_x.
        """
        prepared = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        q_x = prepared[0]
        x = q_x.qvalues
        axes = self._axes(x.ndim, prepared[1] if len(prepared) > 1 else None)
        ex = self.executor(x)
        if self.copy_inputs:
            x = ex.copy(x)
        keepdims = bool(self.attrs.get("keepdims", 1))
        total = np.sum(x, axis=axes, keepdims=keepdims) if axes else x
        n = int(np.prod([q_x.qvalues.shape[a] for a in axes])) if axes else 1
        z_x = q_x.quantizer.zero_point
        if self.produces_graph_output:
            self._track("accumulator", total)
            return self.make_raw_accumulator_array(total, q_x.quantizer.scale, n * z_x)
        centred = self.cnp_round(total - n * z_x, calibrate_rounding, "single_rounding_op")
        self._track("accumulator", centred)
        return self.make_output_quant_array(centred * q_x.quantizer.scale)
