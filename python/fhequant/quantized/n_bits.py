"""The four bit widths of post-training quantization (docs/contract.md §4.1).

``n_bits`` is given as an int or as a dict; :func:`resolve_n_bits` turns it into a
:class:`BitWidths` with the four values the walk uses (a per-op mapping
``{"default": 6, "/fc1/Gemm": 4, ...}`` gives each op its own, :func:`n_bits_per_op`):

========================  ===============================================================
field                     used for
========================  ===============================================================
``model_inputs``          module input quantizers that first feed a univariate op (§4.6)
``op_weights``            quantized initializers (weights, biases, other constants)
``op_inputs``             inputs of non-fusable ops
``model_outputs``         the n_bits of every quantized op, and the inputs of the
                          model-outputs-precision ops (Reshape, Flatten, Concat, ...)
========================  ===============================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fhequant.errors import ArgumentError, QuantizationError
from fhequant.quantized.per_op import PerOp, per_op

__all__ = [
    "DEFAULT_MODEL_INPUTS_BITS",
    "MIN_MODEL_BITS",
    "N_BITS_KEYS",
    "BitWidths",
    "n_bits_per_op",
    "resolve_n_bits",
]

#: model_inputs and model_outputs never go below this width when n_bits is an int.
MIN_MODEL_BITS = 5
#: model_inputs when a dict does not give it.
DEFAULT_MODEL_INPUTS_BITS = 5
#: The keys a dict n_bits may hold.
N_BITS_KEYS = ("model_inputs", "op_weights", "op_inputs", "model_outputs")
_REQUIRED_KEYS = ("op_weights", "op_inputs")


@dataclass(frozen=True)
class BitWidths:
    """The resolved bit widths of a PTQ run.

    Attributes:
        model_inputs: bits of a module input quantizer feeding a univariate op first.
        op_weights: bits of quantized initializers.
        op_inputs: bits of the inputs of non-fusable ops.
        model_outputs: bits of every op output quantizer.
    """

    model_inputs: int
    op_weights: int
    op_inputs: int
    model_outputs: int

    def as_dict(self) -> dict[str, int]:
        """The four widths keyed as in a dict ``n_bits``."""
        return {key: getattr(self, key) for key in N_BITS_KEYS}


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(
            f"n_bits: {what} must be an int, got {type(value).__name__} {value!r}; give a "
            "positive number of bits"
        )
    if int(value) < 1:
        raise QuantizationError(f"n_bits: {what} must be at least 1, got {int(value)}")
    return int(value)


def resolve_n_bits(n_bits: int | Mapping[str, int] | BitWidths) -> BitWidths:
    """Resolve an int or dict ``n_bits`` into the four widths (docs/contract.md §4.1).

    An int ``n`` gives model_inputs = model_outputs = max(5, n) and op_weights = op_inputs =
    n. A dict must give op_weights and op_inputs; model_inputs defaults to 5 and
    model_outputs to max(5, op_inputs).

    Args:
        n_bits: an int, a dict with keys among model_inputs, op_weights, op_inputs and
            model_outputs, or an already resolved BitWidths.

    Returns:
        The resolved widths.

    Raises:
        ArgumentError: (a TypeError) n_bits is neither an int nor a dict, or a value is not
            an int.
        QuantizationError: (a ValueError) missing or unknown keys, a width below 1, or
            model_outputs < op_inputs.
    """
    if isinstance(n_bits, BitWidths):
        return n_bits
    spec = n_bits_per_op(n_bits)
    if spec is not None:
        return spec.default
    return _resolve_global(n_bits)


def _resolve_global(n_bits: Any) -> BitWidths:
    if isinstance(n_bits, BitWidths):
        return n_bits
    if isinstance(n_bits, Mapping):
        unknown = sorted(str(k) for k in n_bits if k not in N_BITS_KEYS)
        if unknown:
            raise QuantizationError(
                f"n_bits: unknown key(s) {unknown}; valid keys are {list(N_BITS_KEYS)}"
            )
        missing = [k for k in _REQUIRED_KEYS if k not in n_bits]
        if missing:
            raise QuantizationError(
                f"n_bits: the dict lacks {missing}; op_weights and op_inputs are required "
                f"(model_inputs and model_outputs are optional), got keys {sorted(n_bits)}"
            )
        op_weights = _as_int(n_bits["op_weights"], "op_weights")
        op_inputs = _as_int(n_bits["op_inputs"], "op_inputs")
        model_inputs = _as_int(
            n_bits.get("model_inputs", DEFAULT_MODEL_INPUTS_BITS), "model_inputs"
        )
        model_outputs = _as_int(
            n_bits.get("model_outputs", max(MIN_MODEL_BITS, op_inputs)), "model_outputs"
        )
        if model_outputs < op_inputs:
            raise QuantizationError(
                f"n_bits: model_outputs ({model_outputs}) must be at least op_inputs "
                f"({op_inputs}); raise model_outputs or lower op_inputs"
            )
        return BitWidths(model_inputs, op_weights, op_inputs, model_outputs)
    if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)):
        raise ArgumentError(
            f"n_bits must be an int or a dict with keys {list(N_BITS_KEYS)}, got "
            f"{type(n_bits).__name__} {n_bits!r}"
        )
    n = _as_int(n_bits, "n_bits")
    wide = max(MIN_MODEL_BITS, n)
    return BitWidths(model_inputs=wide, op_weights=n, op_inputs=n, model_outputs=wide)


#: n_bits of the ops a per-op mapping does not name when it has no "default" entry.
DEFAULT_N_BITS = 8


def _is_global(mapping: Mapping[str, Any]) -> bool:
    return any(k in N_BITS_KEYS for k in mapping)


def n_bits_per_op(n_bits: Any) -> PerOp | None:
    """The per-op form of ``n_bits`` with every value resolved, or None for an int or a
    global dict.

    A mapping whose keys are op names (and optionally "default", else 8) gives each op
    named its own widths: the op's weights (op_weights), the inputs it re-quantizes
    (op_inputs) and its output (model_outputs) use that op's value; the module input
    quantizers (model_inputs) use the default's. Each value is an int or a global dict.

    Args:
        n_bits: the user's n_bits.

    Returns:
        A PerOp of BitWidths, or None.

    Raises:
        ArgumentError, QuantizationError: a value is not a valid n_bits (as resolve_n_bits).
    """
    spec = per_op(n_bits, "n_bits", _is_global, DEFAULT_N_BITS)
    if spec is None:
        return None
    return spec.map(_resolve_global)
