"""The inputs of a quantized op: constant inputs by index or name, and the slot layout.

``constant_inputs`` may be keyed by input index (an int or a digit string), by the ONNX input
name (``"B"`` of Gemm) or by the name Concrete ML gives the input (``"b"`` of Gemm, ``"bias"``
of BatchNormalization: :data:`fhequant.onnx.ops_impl.REFERENCE_INPUT_NAMES`); the op stores
them by index. At run time constants fill their slots first and the variable inputs the rest,
in order (docs/contract.md §2.2).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant.errors import QuantizationError, QuantizedOpError
from fhequant.quantization import QuantizedArray
from fhequant.quantized.ops.float_specs import FloatOpSpec

__all__ = [
    "index_constants",
    "is_fresh",
    "on_uniform_grid",
    "quantized_values_copy",
    "reads_as_quantized",
    "slot_inputs",
    "zp_is_scalar",
]


def zp_is_scalar(zero_point: Any) -> bool:
    """Whether a zero point is one number (not per channel)."""
    return np.ndim(zero_point) == 0


def reads_as_quantized(opts: Any, quantizer: Any) -> bool:
    """Whether an op with input options ``opts`` reads the integers of a variable input
    quantized by ``quantizer`` as they are (the first case of the re-quantization rule,
    docs/contract.md §2.2)."""
    return zp_is_scalar(quantizer.zero_point) and (
        opts.is_equal(quantizer.quant_options, ignore_sign_qat=True)
        or bool(quantizer.is_precomputed_qat)
    )


def quantized_values_copy(
    qa: QuantizedArray, qvalues: Any = None, *, copy_values: bool = True, narrow: bool = False
) -> QuantizedArray:
    """A new QuantizedArray holding qvalues (default: qa's) with qa's options, stats, params
    (``copy_values=False`` shares the integers instead of copying them; with ``narrow`` too,
    integers that qa holds narrow, or would quantize into int8/int16, stay narrow: see
    :meth:`QuantizedArray.narrow_qvalues`)."""
    q = qa.quantizer
    parts = qa.narrow_parts() if narrow and qvalues is None and not copy_values else None
    if parts is not None:
        return QuantizedArray.from_narrow_quantizer(q, *parts)
    return QuantizedArray(
        q.n_bits,
        qa.qvalues if qvalues is None else qvalues,
        value_is_float=False,
        options=q.quant_options,
        stats=q.quant_stats,
        params=q.quant_params,
        copy_values=copy_values,
        defer=True,
    )


def is_fresh(out: Any, inputs: list[Any]) -> bool:
    """Whether ``out`` is an ndarray owning its memory and sharing none with ``inputs`` (so a
    QuantizedArray may keep it without a copy)."""
    return (
        type(out) is np.ndarray
        and out.flags.owndata
        and not any(isinstance(i, np.ndarray) and np.may_share_memory(out, i) for i in inputs)
    )


def on_uniform_grid(quantizer: Any, opts: Any) -> bool:
    """QAT import: whether a producer's calibration values already sit on an n-bit grid."""
    try:
        return bool(quantizer.check_is_uniform_quantized(opts))
    except QuantizationError:  # no uvalues (loaded or explicit statistics): not provable
        return False


def _input_index(label: str, key: Any, spec: FloatOpSpec) -> int:
    names = spec.input_names
    is_index = isinstance(key, (int, np.integer)) and not isinstance(key, bool)
    if is_index or (isinstance(key, str) and key.isdigit()):
        return int(key)
    if isinstance(key, str) and key in names:
        return names.index(key)
    if isinstance(key, str) and key in spec.reference_input_names:
        return spec.reference_input_names.index(key)
    reference = (
        f", the reference names {list(spec.reference_input_names)}"
        if spec.reference_input_names
        else ""
    )
    raise QuantizedOpError(
        f"{label}: unknown constant input {key!r}; valid keys are the inputs "
        f"{list(names)}{reference} or their indices"
    )


def index_constants(
    label: str, constant_inputs: dict[str, Any] | dict[int, Any] | None, spec: FloatOpSpec
) -> dict[int, Any]:
    """``constant_inputs`` keyed by input index.

    Args:
        label: the op, for errors.
        constant_inputs: keyed by index, digit string, ONNX or reference input name.
        spec: the op's float spec.

    Returns:
        The constants by index.

    Raises:
        QuantizedOpError: an unknown key, an index out of range or two keys for one input.
    """
    if not constant_inputs:
        return {}
    names = spec.input_names
    out: dict[int, Any] = {}
    for key, value in constant_inputs.items():
        idx = _input_index(label, key, spec)
        if not spec.variadic and idx >= len(names):
            raise QuantizedOpError(
                f"{label}: constant input index {idx} is out of range; the op takes the "
                f"inputs {list(names)}"
            )
        if idx in out:
            raise QuantizedOpError(
                f"{label}: constant input {key!r} names input {idx}, which another key "
                "already sets; give each input once"
            )
        out[idx] = value
    return out


def slot_inputs(
    label: str, spec: FloatOpSpec, inputs: tuple[Any, ...], constants: dict[int, Any]
) -> list[Any]:
    """Constants fill their slots first; variable inputs fill the rest, in order.

    Args:
        label: the op, for errors.
        spec: the op's float spec.
        inputs: the variable inputs.
        constants: the constant inputs by index.

    Returns:
        One entry per input slot.

    Raises:
        QuantizedOpError: too few or too many inputs.
    """
    total = len(inputs) + len(constants)
    if total < spec.n_required or (not spec.variadic and total > len(spec.input_names)):
        expected = (
            f"at least {spec.n_required}"
            if spec.variadic
            else (
                f"{spec.n_required}"
                if spec.n_required == len(spec.input_names)
                else f"{spec.n_required} to {len(spec.input_names)}"
            )
        )
        raise QuantizedOpError(
            f"{label}: got {len(inputs)} variable input(s) and {len(constants)} constant(s), "
            f"{total} in all; the op expects {expected} inputs ({list(spec.input_names)})"
        )
    slots: list[Any] = [None] * total
    filled = [False] * total
    for idx, value in constants.items():
        if idx >= total:
            raise QuantizedOpError(
                f"{label}: constant input {idx} is past the {total} inputs given"
            )
        slots[idx] = value
        filled[idx] = True
    it = iter(inputs)
    for i in range(total):
        if not filled[i]:
            slots[i] = next(it)
    return slots
