"""Checks of model inputs against the ONNX graph's declared inputs (names, rank, feature
dimensions, dtype), so a wrong calibration set or forward input fails with a typed error that
names the input and the expected shape instead of deep inside an op."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fhequant.errors import DTypeError, InputClippingWarning, NonFiniteError, ShapeError

__all__ = [
    "CLIP_WARNING_FRACTION",
    "InputSpec",
    "check_forward_inputs",
    "check_inputs",
    "check_output_shapes",
    "input_checker",
    "input_specs",
    "module_input_specs",
]


@dataclass(frozen=True)
class InputSpec:
    """A graph input: its name and shape (None for a symbolic dimension)."""

    name: str
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        """The shape with the batch axis and symbolic dimensions shown as N / ?."""
        dims = ["N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(self.shape)]
        return f"({', '.join(dims)})"


def input_specs(onnx_model: Any) -> list[InputSpec] | None:
    """The specs of the graph inputs that are not initializers (None if a shape is unknown)."""
    initializers = {t.name for t in onnx_model.graph.initializer}
    specs = []
    for info in onnx_model.graph.input:
        if info.name in initializers:
            continue
        tensor = info.type.tensor_type
        if not tensor.HasField("shape"):
            return None
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        specs.append(InputSpec(info.name, shape))
    return specs


def _layout_hint(arr: np.ndarray, spec: InputSpec) -> str:
    if arr.ndim == 4 and len(spec.shape) == 4 and spec.shape[1] is not None:
        channels = spec.shape[1]
        if arr.shape[-1] == channels and arr.shape[1] != channels:
            return (
                "; the data looks channels-last (NHWC) while the model expects channels-first "
                "(NCHW): pass x.transpose(0, 3, 1, 2)"
            )
    return ""


def check_inputs(arrays: tuple[np.ndarray, ...], specs: list[InputSpec], where: str) -> None:
    """Raise when ``arrays`` (one per input) do not fit ``specs``.

    The batch axis (0) is free; other fixed dimensions must match.

    Raises:
        DTypeError: non-numeric data (strings, objects) (a TypeError).
        ShapeError: a wrong rank or feature dimension (a ValueError).
    """
    for arr, spec in zip(arrays, specs, strict=False):
        if arr.dtype.kind not in "biuf":
            raise DTypeError(
                f"{where}: model input {spec.name!r} has dtype {arr.dtype}; give numbers "
                f"(float32 or float64) of shape {spec.describe()}"
            )
        rank = len(spec.shape)
        if rank == 1 and arr.ndim == 2 and arr.shape[1] == 1:
            continue  # a (N, 1) column for an (N) input: broadcast by the graph as before
        if arr.ndim != rank:
            raise ShapeError(
                f"{where}: model input {spec.name!r} has shape {arr.shape} (rank {arr.ndim}) "
                f"but the model expects {spec.describe()} (rank {len(spec.shape)}, rows on "
                f"axis 0){_layout_hint(arr, spec)}"
            )
        wrong = [
            axis
            for axis, want in enumerate(spec.shape)
            if axis > 0 and want is not None and arr.shape[axis] != want
        ]
        if wrong:
            raise ShapeError(
                f"{where}: model input {spec.name!r} has shape {arr.shape} but the model "
                f"expects {spec.describe()} (axis {wrong[0]} should be {spec.shape[wrong[0]]})"
                f"{_layout_hint(arr, spec)}"
            )


def input_checker(onnx_model: Any) -> Callable[[tuple[np.ndarray, ...], str], None] | None:
    """A check of input batches against the model's graph inputs (None when unknown)."""
    specs = input_specs(onnx_model)
    if not specs:
        return None
    return lambda arrays, where: check_inputs(arrays, specs, where)


#: Warn at inference when more than this fraction of an input's values is clipped.
CLIP_WARNING_FRACTION = 0.2


def module_input_specs(module: Any) -> list[InputSpec] | None:
    """The graph inputs' shapes of a QuantizedModule, cached on it (None without an ONNX
    model, or with pre-processing, whose raw inputs differ from the graph's)."""
    if module.onnx_model is None or module.onnx_preprocessing is not None:
        return None
    cached = getattr(module, "_input_specs_cache", None)
    if cached is None or cached[0] is not module.onnx_model:
        cached = (module.onnx_model, input_specs(module.onnx_model))
        module._input_specs_cache = cached
    specs: list[InputSpec] | None = cached[1]
    return specs


def check_output_shapes(q_y: tuple[Any, ...], quantizers: list[Any], names: Any) -> None:
    """Raise ShapeError when integers given to ``dequantize_output`` do not broadcast with
    their output quantizer's array scale or zero point."""
    for index, (q, v) in enumerate(zip(quantizers, q_y, strict=False)):
        for part in ("scale", "zero_point"):
            param = getattr(q, part, None)
            if not (isinstance(param, np.ndarray) and param.ndim and hasattr(v, "shape")):
                continue
            try:
                np.broadcast_shapes(np.shape(v), param.shape)
            except ValueError:
                raise ShapeError(
                    f"dequantize_output: output {index} ({names[index]!r}) has shape "
                    f"{np.shape(v)}, which does not fit its quantizer's {part} of shape "
                    f"{param.shape}; pass the integers quantized_forward returned"
                ) from None


def check_forward_inputs(
    arrays: tuple[np.ndarray, ...],
    names: tuple[str, ...],
    module: Any,
    quantizers: list[Any],
) -> None:
    """Checks of ``forward`` inputs before they are quantized.

    Raises:
        ShapeError: a rank or feature dimension that does not fit the graph (a 1-D row given
            for a 2-D input is named as such).
        NonFiniteError: NaN values (they have no integer).

    Warns:
        InputClippingWarning: infinite values, or more than 20 % of an input's values
            outside its calibrated range (clipped to the extreme integers).
    """
    specs = module_input_specs(module)
    if specs is not None and len(specs) == len(arrays):
        for arr, spec in zip(arrays, specs, strict=True):
            if arr.ndim == len(spec.shape) - 1 and arr.ndim >= 1:
                raise ShapeError(
                    f"forward: model input {spec.name!r} has shape {arr.shape}, one axis short "
                    f"of {spec.describe()}; rows go on axis 0: for a single sample pass "
                    "x[None] (or x.reshape(1, ...))"
                )
        check_inputs(arrays, specs, "forward")
    for name, arr, quantizer in zip(names, arrays, quantizers, strict=False):
        if arr.dtype.kind != "f" or not arr.size:
            continue
        # Two reductions find NaN/inf (min/max propagate them) and the range; the per-element
        # passes below run only when the extremes say they can find something.
        extremes = (float(np.min(arr)), float(np.max(arr)))
        if not (np.isfinite(extremes[0]) and np.isfinite(extremes[1])):
            finite = np.isfinite(arr)
            if np.isnan(arr).any():
                raise NonFiniteError(
                    f"forward: model input {name!r} contains NaN at {int(np.isnan(arr).sum())} "
                    "position(s); NaN has no quantized value, replace it (e.g. np.nan_to_num) "
                    "before calling forward"
                )
            warnings.warn(
                f"forward: model input {name!r} contains {int((~finite).sum())} infinite "
                "value(s); they are clipped to the extreme integers of the input quantizer",
                InputClippingWarning,
                stacklevel=3,
            )
        _warn_if_clipped(name, arr, quantizer, extremes)


def _warn_if_clipped(
    name: str, arr: np.ndarray, quantizer: Any, extremes: tuple[float, float]
) -> None:
    scale: Any = getattr(quantizer, "scale", None)
    zp: Any = getattr(quantizer, "zero_point", None)
    if (
        zp is None
        or quantizer is None
        or quantizer.no_clipping
        or not isinstance(scale, (float, np.floating))
        or quantizer.is_qat  # QAT input ranges are the trained model's own clipping
        or quantizer.is_precomputed_qat
    ):
        return
    if not np.isfinite(scale) or scale <= 0 or np.ndim(zp) != 0:
        return
    lo, hi = quantizer.clip_bounds()
    low = float(scale) * (lo - float(zp) - 0.5)
    high = float(scale) * (hi - float(zp) + 0.5)
    if extremes[0] >= low and extremes[1] <= high:
        return  # nothing lies outside the range: no value is clipped
    clipped = np.count_nonzero((arr < low) | (arr > high))
    fraction = clipped / arr.size
    if fraction > CLIP_WARNING_FRACTION:
        warnings.warn(
            f"forward: {fraction:.1%} of the values of model input {name!r} lie outside the "
            f"calibrated range [{low:.4g}, {high:.4g}] and are clipped; calibrate with data "
            "that covers the inputs seen at inference",
            InputClippingWarning,
            stacklevel=3,
        )
