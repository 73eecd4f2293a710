"""The QAT power-of-two pass on a finished QuantizedModule (docs/contract.md §4.7)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant.quantization import QuantizedArray
from fhequant.quantized.graph import BREVITAS_QUANT as _BREVITAS_QUANT

__all__ = ["apply_power_of_two_scaling"]

_POW2_RTOL = 0.01


def _pow2_exponent(scale: Any) -> int | None:
    """round(log2 s) when the (scalar, positive) scale is within 1% of that power of two."""
    arr = np.asarray(scale, dtype=np.float64)
    if arr.size != 1:
        return None
    value = float(arr.reshape(-1)[0])
    if not np.isfinite(value) or value <= 0:
        return None
    e = int(np.round(np.log2(value)))
    return e if np.isclose(value, 2.0**e, rtol=_POW2_RTOL, atol=0.0) else None


def _op_scale(op: Any) -> Any:
    params = getattr(op, "output_quant_params", None)
    return None if params is None else params.scale


def apply_power_of_two_scaling(module: Any, rounding_threshold_bits: Any = None) -> list[str]:
    """The QAT power-of-two pass (docs/contract.md §4.7).

    For each chain BrevitasQuant → Gemm/MatMul/Conv (one encrypted input) → Relu →
    BrevitasQuant → Gemm/Conv whose input, weight and output scales are powers of two
    (rtol 1%), the accumulator of the first linear op drops k = -(log2 s_in + log2 s_w -
    log2 s_out) low bits, a shift-like requantization (only when k > 0 and the user set no
    rounding_threshold_bits).

    Args:
        module: the QuantizedModule (QAT import).
        rounding_threshold_bits: the user's setting; anything but None disables the pass.

    Returns:
        The names of the ops that were rewritten.
    """
    if rounding_threshold_bits is not None:
        return []
    layers: dict[str, tuple[tuple[str, ...], Any]] = module.quant_layers_dict
    consumers: dict[str, list[tuple[str, Any]]] = {}
    for out, (inputs, op) in layers.items():
        for name in inputs:
            consumers.setdefault(name, []).append((out, op))

    def only_consumer(name: str) -> tuple[str, Any] | None:
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 else None

    rewritten: list[str] = []
    for out, (inputs, op) in layers.items():
        if not type(op).pow2_accumulator_shift or len(inputs) != 1:
            continue
        producer = layers.get(inputs[0])
        if producer is None or producer[1]._impl_for_op_named != _BREVITAS_QUANT:
            continue
        relu = only_consumer(out)
        if relu is None or relu[1]._impl_for_op_named != "Relu":
            continue
        quant = only_consumer(relu[0])
        if quant is None or quant[1]._impl_for_op_named != _BREVITAS_QUANT:
            continue
        nxt = only_consumer(quant[0])
        if nxt is None or nxt[1]._impl_for_op_named not in ("Gemm", "Conv"):
            continue
        weight = op.constant_inputs.get(1)
        if not isinstance(weight, QuantizedArray):
            continue
        exps = [
            _pow2_exponent(_op_scale(producer[1])),
            _pow2_exponent(weight.quantizer.scale),
            _pow2_exponent(_op_scale(quant[1])),
        ]
        if any(e is None for e in exps):
            continue
        e_in, e_w, e_out = (int(e) for e in exps if e is not None)
        k = -(e_in + e_w - e_out)
        if k <= 0:
            continue
        if 2 <= k <= 8:
            op.rounding_threshold_bits = k
        op.lsbs_to_remove["matmul"] = k
        rewritten.append(op.op_instance_name)
    return rewritten
