"""rounding_threshold_bits normalisation and accumulator bit widths (docs/contract.md §2.4)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant.errors import InvalidOptionKeyError, QuantizedOpError, UnsupportedOptionError
from fhequant.quantized.exec import fhe_module
from fhequant.quantized.per_op import PerOp, per_op

__all__ = [
    "ROUNDING_IDS",
    "compute_bits_precision",
    "normalize_rounding_threshold_bits",
    "rounding_per_op",
]

#: The accumulator ids of ``lsbs_to_remove`` (one per rounding point of an op).
ROUNDING_IDS = (
    "matmul",
    "add",
    "sub",
    "input0_q_values_copy",
    "input1_q_values_copy",
    "product_q_values",
    "single_rounding_op",
)


def compute_bits_precision(lo: int, hi: int) -> int:
    """Bits needed to hold every integer in [lo, hi] (docs/contract.md §2.4).

    Args:
        lo: the minimum.
        hi: the maximum.

    Returns:
        The larger of the widths of the two ends; a positive end gets one more bit when
        lo < 0 (the sign bit).
    """

    def width(v: int) -> int:
        if v == 0:
            return 1
        if v < 0:
            return (-v - 1).bit_length() + 1
        return v.bit_length() + (1 if lo < 0 else 0)

    return max(width(int(lo)), width(int(hi)))


def _exactness(name: Any, op_label: str) -> Any:
    Exactness = fhe_module().Exactness

    if isinstance(name, Exactness):
        return name
    if isinstance(name, str) and name.upper() in ("EXACT", "APPROXIMATE"):
        return Exactness[name.upper()]
    raise QuantizedOpError(
        f"{op_label}: rounding method {name!r} is not valid; use 'EXACT' or 'APPROXIMATE' "
        "(or a concrete.fhe.Exactness)"
    )


def normalize_rounding_threshold_bits(value: Any, op_label: str = "rounding_threshold_bits") -> Any:
    """Normalise rounding_threshold_bits to None or {"n_bits": k, "method": Exactness}.

    Args:
        value: None, an int, or a dict with keys among "n_bits" and "method".
        op_label: what to name in error messages.

    Returns:
        None or the normalised dict.

    Raises:
        InvalidOptionKeyError: (a KeyError) unknown dict keys.
        UnsupportedOptionError: (a NotImplementedError) n_bits == "auto".
        QuantizedOpError: (a ValueError) any other invalid value.
    """
    if value is None:
        return None
    method: Any = "EXACT"
    if isinstance(value, dict):
        allowed = {"n_bits", "method"}
        invalid = sorted(set(value) - allowed)
        if invalid:
            raise InvalidOptionKeyError(
                f"{op_label}: invalid rounding_threshold_bits key(s) {invalid}; allowed keys "
                f"are {sorted(allowed)}"
            )
        n_bits = value.get("n_bits")
        method = value.get("method", "EXACT")
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n_bits = value
    else:
        raise QuantizedOpError(
            f"{op_label}: rounding_threshold_bits must be None, an int or a dict with "
            f"'n_bits' and 'method', got {type(value).__name__} {value!r}"
        )
    if isinstance(n_bits, str) and n_bits == "auto":
        raise UnsupportedOptionError(
            f"{op_label}: rounding_threshold_bits n_bits='auto' is not implemented; give an "
            "int in [2, 8]"
        )
    if not isinstance(n_bits, (int, np.integer)) or isinstance(n_bits, bool):
        raise QuantizedOpError(
            f"{op_label}: rounding_threshold_bits n_bits must be an int in [2, 8], got {n_bits!r}"
        )
    exactness = _exactness(method, op_label)
    if not 2 <= int(n_bits) <= 8:
        raise QuantizedOpError(
            f"{op_label}: rounding_threshold_bits n_bits must be in [2, 8], got {int(n_bits)}"
        )
    return {"n_bits": int(n_bits), "method": exactness}


def _is_global_rounding(mapping: Any) -> bool:
    return any(k in ("n_bits", "method") for k in mapping)


def rounding_per_op(value: Any) -> PerOp | None:
    """The per-op form of a module's ``rounding_threshold_bits`` (every value normalised),
    or None for a global value (None, an int, {"n_bits": k, "method": ...}).

    A mapping of op names (and optionally "default", else None: no rounding) gives each
    mixing op named its own threshold; each value is a global form.

    Args:
        value: the user's rounding_threshold_bits.

    Returns:
        A PerOp of normalised values, or None.

    Raises:
        QuantizedOpError, InvalidOptionKeyError: a value is invalid (as
            normalize_rounding_threshold_bits).
    """
    spec = per_op(value, "rounding_threshold_bits", _is_global_rounding, None)
    if spec is None:
        return None
    return spec.map(lambda v: normalize_rounding_threshold_bits(v, "rounding_threshold_bits"))
