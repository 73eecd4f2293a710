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
    "QuantizedGlobalAveragePool",
    "QuantizedGlobalMaxPool",
    "QuantizedMaxPool",
    "QuantizedPad",
    "QuantizedReduceMean",
    "QuantizedReduceSum",
    "QuantizedUnfold",
]


def _raw(v: Any) -> Any:
    return v.values if isinstance(v, QuantizedArray) else v


def _window_attrs(
    op: QuantizedOp,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    """kernel_shape, strides and ONNX pads [h_b, w_b, h_e, w_e] of a 1-D or 2-D window op,
    in 2-D form (a 1-D window is a 1xk window over an input of height 1)."""
    ks = op.attrs.get("kernel_shape")
    if ks is None or len(ks) not in (1, 2):
        raise QuantizedOpError(
            f"{op._label()}: kernel_shape must have one or two entries (1-D or 2-D), got {ks!r}"
        )
    nsp = len(ks)
    st = op.attrs.get("strides") or [1] * nsp
    pd = op.attrs.get("pads") or [0] * (2 * nsp)
    if len(st) != nsp or len(pd) != 2 * nsp:
        raise QuantizedOpError(
            f"{op._label()}: strides {list(st)} / pads {list(pd)} do not describe a {nsp}-D "
            f"window; give {nsp} strides and {2 * nsp} pads"
        )
    if nsp == 1:
        return (1, int(ks[0])), (1, int(st[0])), (0, int(pd[0]), 0, int(pd[1]))
    return (
        (int(ks[0]), int(ks[1])),
        (int(st[0]), int(st[1])),
        (int(pd[0]), int(pd[1]), int(pd[2]), int(pd[3])),
    )


def _as_2d(op: QuantizedOp, x: Any) -> tuple[Any, bool]:
    """(x as an NCHW tensor, whether it was N, C, L): 1-D pools run as 1xk 2-D pools."""
    one_d = len(op.attrs["kernel_shape"]) == 1
    if len(x.shape) != (3 if one_d else 4):
        raise QuantizedOpError(
            f"{op._label()}: a {'1' if one_d else '2'}-D window needs a "
            f"{'3' if one_d else '4'}-D input, got shape {tuple(x.shape)}"
        )
    if one_d:
        n, c, length = (int(d) for d in x.shape)
        return x.reshape((n, c, 1, length)), True
    return x, False


def _from_2d(x: Any, one_d: bool) -> Any:
    if not one_d or isinstance(x, (int, np.integer)):
        return x
    n, c, _, length = (int(d) for d in x.shape)
    return x.reshape((n, c, length))


def _avgpool_norm(
    hw: tuple[int, ...],
    k: tuple[int, int],
    s: tuple[int, int],
    p: tuple[int, int, int, int],
    ceil: int,
    count_include_pad: int = 1,
) -> Any:
    """The counted cells of each window: kh·kw, less the ceil extension (ceil mode) and the
    explicit pads (count_include_pad 0)."""
    pads_counted = count_include_pad or not any(p)
    if pads_counted and (not ceil or ik.ceil_mode_extension(hw, k, s, p) == (0, 0)):
        return k[0] * k[1]
    ones = np.ones((1, 1, *hw), dtype=np.int64)
    return ik.window_sum(ones, k, s, p, 1 if pads_counted else 0, ceil_mode=ceil)


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


def _max_pool_input(op: QuantizedOp, q_inputs: tuple[Any, ...]) -> QuantizedArray:
    """The opening of the max pools' q_impl: the one encrypted input, quantized with the
    op's input quantizer and tracked as the prepared input."""
    (q_x,) = op._prepare_inputs_with_constants(
        *q_inputs, calibrate=False, quantize_actual_values=True
    )
    op._track("prepared_inputs", [q_x])
    return q_x


def _max_pool_output(op: QuantizedOp, pooled: Any, q_x: QuantizedArray, z_x: int) -> Any:
    """The closing of the max pools' q_impl: the window maxima (integers of ``q_x``'s
    quantizer) dequantized into the op's calibrated output."""
    v = (pooled.astype(np.float64) - z_x) * q_x.quantizer.scale
    return op.make_output_quant_array(v)


class QuantizedAvgPool(QuantizedMixingOp):
    """1-D or 2-D average pooling: an integer window sum times 1/norm (docs/contract.md §3.6).

    norm counts the cells of each window that are neither ceil extension nor, with
    ``count_include_pad`` 0 (the ONNX default, e.g. nn.AdaptiveAvgPool2d's export), padding.
    """

    _impl_for_op_named = "AveragePool"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_attr(self, "auto_pad", ("NOTSET",))
        _check_attr(self, "count_include_pad", (0, 1))
        _check_attr(self, "ceil_mode", (0, 1))
        dil = self.attrs.get("dilations")
        if dil is not None and any(int(d) != 1 for d in dil):
            raise QuantizedOpError(
                f"{self._label()}: dilations={list(dil)} are not supported; use dilation 1"
            )
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
        x, one_d = _as_2d(self, q_x.qvalues)
        ceil = int(self.attrs["ceil_mode"])
        count_pads = int(self.attrs["count_include_pad"])
        ex = self.executor(x)
        # pads not counted are filled with 0 (like the ceil extension): the sum then holds
        # only the counted cells, each q - z_x once the mean is taken
        total = ex.window_sum(x, k, s, p, z_x if count_pads or not any(p) else 0, ceil)
        total = self.cnp_round(total, calibrate_rounding, "single_rounding_op")
        self._track("accumulator", total)
        hw = tuple(int(d) for d in x.shape[-2:])
        norm = _avgpool_norm(hw, k, s, p, ceil, count_pads)
        v = _from_2d(total, one_d).astype(np.float64) * (1.0 / _from_2d(norm, one_d)) - z_x
        return self.make_output_quant_array(v * q_x.quantizer.scale)


class QuantizedMaxPool(QuantizedOp):
    """1-D or 2-D max pooling of the zp-padded integers (non-fusable, docs/contract.md §3.6).

    ceil_mode 1 extends the padded input up to the ceil output size with the lowest integer
    of the input's quantizer, which never wins a window; dilations go to the window maxima.
    """

    _impl_for_op_named = "MaxPool"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_attr(self, "auto_pad", ("NOTSET",))
        _check_attr(self, "ceil_mode", (0, 1))
        _check_attr(self, "storage_order", (0,))
        self._dilations()

    def _dilations(self) -> tuple[int, int]:
        _window_attrs(self)
        dil = self.attrs.get("dilations")
        if dil is None:
            return 1, 1
        d = [int(v) for v in dil]
        if len(d) != len(self.attrs["kernel_shape"]) or any(v < 1 for v in d):
            raise QuantizedOpError(
                f"{self._label()}: dilations={d} must give one positive value per window axis"
            )
        return (1, d[0]) if len(d) == 1 else (d[0], d[1])

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
        q_x = _max_pool_input(self, q_inputs)
        k, s, p = _window_attrs(self)
        d = self._dilations()
        z_x = _scalar_zp(self, q_x)
        x, one_d = _as_2d(self, q_x.qvalues)
        ext: tuple[int, int] = (0, 0)
        if int(self.attrs["ceil_mode"]):
            span = ((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1)
            hw = (int(x.shape[-2]), int(x.shape[-1]))
            ext = tuple(int(e) for e in ik.ceil_mode_extension(hw, span, s, p))  # type: ignore[assignment]
        low = int(q_x.quantizer.clip_bounds()[0])
        pooled = self.executor(x).maxpool(
            x, k, s, p, z_x, dilations=d, ceil_extension=ext, extension_value=low
        )
        return _max_pool_output(self, _from_2d(pooled, one_d), q_x, z_x)


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
        return _reduction_axes(self, ndim, axes, "summing")

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


def _reduction_axes(op: QuantizedOp, ndim: int, axes: Any, verb: str) -> tuple[int, ...]:
    """The sorted non-negative axes a Reduce* op reduces over (ONNX defaults: all axes, or none
    with ``noop_with_empty_axes``); the batch axis 0 is refused naming the op."""
    if axes is None or np.size(_raw(axes)) == 0:
        if op.attrs.get("noop_with_empty_axes", 0):
            return ()
        result = tuple(range(ndim))
    else:
        result = tuple(sorted(int(a) % ndim for a in np.ravel(_raw(axes))))
    if 0 in result:
        raise QuantizedOpError(
            f"{op._label()}: {verb} over axis 0 (the batch axis) is not supported; "
            f"axes resolve to {list(result)}"
        )
    return result


class _MeanOverAxes(QuantizedMixingOp):
    """A mean over non-batch axes: an integer sum, rounded, times s_x/n (docs/contract.md §3.6).

    v = (float64(round(Σ q)) · (1.0/n) - z_x) · s_x, the AveragePool rescale with one window
    per reduced slice; the sum is one executor ``sum`` node.
    """

    def _reduced_axes(self, ndim: int, axes: Any) -> tuple[int, ...]:
        raise NotImplementedError

    def _keepdims(self) -> bool:
        return True

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Sum the integers over the axes, round, rescale by s_x/n.

        Args:
            *q_inputs: the encrypted input (and raw axes if not constant).
            calibrate_rounding: update lsbs_to_remove from this batch.
            **attrs: unused.

        Returns:
            The calibrated QuantizedArray of the means.
        """
        prepared = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        q_x = prepared[0]
        self._track("prepared_inputs", [q_x])
        x = q_x.qvalues
        axes = self._reduced_axes(len(x.shape), prepared[1] if len(prepared) > 1 else None)
        if not axes:
            return quantized_values_copy(q_x, x)
        z_x = _scalar_zp(self, q_x)
        n = int(np.prod([int(x.shape[a]) for a in axes]))
        ex = self.executor(x)
        total = ex.sum(x, axes, keepdims=self._keepdims())
        total = self.cnp_round(total, calibrate_rounding, "single_rounding_op")
        self._track("accumulator", total)
        v = (total.astype(np.float64) * (1.0 / n) - z_x) * q_x.quantizer.scale
        return self.make_output_quant_array(v)


class QuantizedGlobalAveragePool(_MeanOverAxes):
    """The mean over the spatial axes (any rank), kept as size-1 axes."""

    _impl_for_op_named = "GlobalAveragePool"

    def _reduced_axes(self, ndim: int, axes: Any) -> tuple[int, ...]:
        if ndim < 3:
            raise QuantizedOpError(
                f"{self._label()}: needs an (N, C, spatial...) input, got {ndim} dimensions"
            )
        return tuple(range(2, ndim))


class QuantizedReduceMean(_MeanOverAxes):
    """The mean over non-batch axes (LayerNorm's exported form uses it on the last axis)."""

    _impl_for_op_named = "ReduceMean"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        axes = self.constant_inputs.get(1)
        if axes is None:
            axes = self.attrs.get("axes")
        if axes is not None and any(int(a) == 0 for a in np.ravel(_raw(axes))):
            raise QuantizedOpError(
                f"{self._label()}: averaging over axis 0 (the batch axis) is not supported"
            )

    def _keepdims(self) -> bool:
        return bool(self.attrs.get("keepdims", 1))

    def _reduced_axes(self, ndim: int, axes: Any) -> tuple[int, ...]:
        if axes is None and self.attrs.get("axes"):
            axes = self.attrs["axes"]
        return _reduction_axes(self, ndim, axes, "averaging")

    def calibrate(self, *inputs: Any) -> Any:
        """Float calibration; rejects a mean over the batch axis.

        Args:
            *inputs: the variable inputs.

        Returns:
            The float means.
        """
        prepared = self._prepare_inputs_with_constants(
            *inputs, calibrate=True, quantize_actual_values=False
        )
        self._reduced_axes(np.ndim(prepared[0]), prepared[1] if len(prepared) > 1 else None)
        return super().calibrate(*inputs)


class QuantizedGlobalMaxPool(QuantizedOp):
    """The maximum over the spatial axes (any rank), kept as size-1 axes: one window max
    over the flattened spatial axes (non-fusable)."""

    _impl_for_op_named = "GlobalMaxPool"

    def can_fuse(self) -> bool:
        """GlobalMaxPool compares encrypted values: never fusable."""
        return False

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """The window maximum of the integers over all spatial cells, then rescale.

        Args:
            *q_inputs: the encrypted input.
            calibrate_rounding: unused.
            **attrs: unused.

        Returns:
            The calibrated QuantizedArray of the maxima.
        """
        q_x = _max_pool_input(self, q_inputs)
        shape = tuple(int(d) for d in q_x.qvalues.shape)
        if len(shape) < 3:
            raise QuantizedOpError(
                f"{self._label()}: needs an (N, C, spatial...) input, got shape {shape}"
            )
        z_x = _scalar_zp(self, q_x)
        cells = int(np.prod(shape[2:]))
        flat = q_x.qvalues.reshape((shape[0], shape[1], 1, cells))
        pooled = self.executor(flat).maxpool(flat, (1, cells), (1, 1), (0, 0, 0, 0), z_x)
        pooled = pooled.reshape(shape[:2] + (1,) * (len(shape) - 2))
        return _max_pool_output(self, pooled, q_x, z_x)
