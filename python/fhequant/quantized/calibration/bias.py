"""Bias correction of Gemm / MatMul / Conv (opt-in, ``calibration={"bias_correction": True}``).

Quantizing the weights shifts the mean of the op's output by ``(W - dequant(Wq)) · E[x]``.
The bias absorbs that shift before the op is calibrated: ``E[x]`` is the mean of the integers
the op really reads (its calibration input, re-quantized by the op as in ``q_impl``), summed
exactly as Python ints over the blocks, so the correction is the same for any batch split:
``E[x] = scale · (Σq / N - zero_point)`` per input feature (per input channel for Conv, whose
shift then sums the kernel's weight error over its window; padding is ignored).

Ops without a constant bias, with encrypted weights, grouped convolutions, ``transA`` or
per-element input scales are left as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant.quantization import QuantizedArray

__all__ = ["correct_bias", "input_mean"]


def input_mean(passes: Any, op: Any, name: str, feature_axis: int) -> np.ndarray | None:
    """The mean of the integers op reads from ``name`` per feature (along ``feature_axis``),
    dequantized; None when the input is not a per-tensor quantized array."""
    sums: Any = None
    count = 0
    scale = zero_point = None
    for b in passes.store.blocks(f"{op.op_instance_name} (bias correction)"):
        qa = passes.calibration_qa(name, b, op)
        if not isinstance(qa, QuantizedArray):
            return None
        prepared = op._prepare_inputs_with_constants(
            qa, calibrate=False, quantize_actual_values=True
        )[0]
        q = prepared.quantizer
        if np.ndim(q.scale) or np.ndim(q.zero_point):
            return None
        scale, zero_point = float(q.scale), float(q.zero_point)
        ints = np.asarray(prepared.qvalues)
        axes = tuple(a for a in range(ints.ndim) if a != feature_axis % ints.ndim)
        block = np.sum(ints, axis=axes, dtype=np.int64)
        block_sums = [int(v) for v in block]
        sums = (
            block_sums if sums is None else [a + c for a, c in zip(sums, block_sums, strict=True)]
        )
        count += ints.size // max(block.size, 1)
    if sums is None or count == 0 or scale is None or zero_point is None:
        return None
    return np.array([scale * (s / count - zero_point) for s in sums], dtype=np.float64)


def correct_bias(passes: Any, op: Any, variable: list[str]) -> None:
    """Fold the mean output shift of weight quantization into the op's bias (in place)."""
    weights, bias = op.constant_inputs.get(1), op.constant_inputs.get(2)
    if len(variable) != 1 or not isinstance(weights, QuantizedArray) or bias is None:
        return
    if op.attrs.get("transA", 0) or op.attrs.get("group", 1) != 1:
        return
    w = np.asarray(weights.values, dtype=np.float64)
    error = w - np.asarray(weights.quantizer.dequant(weights.qvalues), dtype=np.float64)
    kind = op._impl_for_op_named
    if kind == "Conv":
        mean = input_mean(passes, op, variable[0], 1)
        if mean is None or mean.shape[0] != error.shape[1]:
            return
        shift = error.reshape(error.shape[0], error.shape[1], -1).sum(axis=2) @ mean
    else:
        if error.ndim != 2:
            return
        mean = input_mean(passes, op, variable[0], -1)
        w_in = error.T if (kind == "Gemm" and op.attrs.get("transB", 0)) else error
        if mean is None or mean.shape[0] != w_in.shape[0]:
            return
        shift = mean @ w_in
    values = np.asarray(bias.values if isinstance(bias, QuantizedArray) else bias)
    if values.shape != shift.shape:
        return
    corrected = (values.astype(np.float64) + shift).astype(values.dtype)
    op.constant_inputs[2] = passes.process_initializer(corrected, "bias")
