"""Settings given per op: ``{"default": v, "<op name>": v, ...}`` (docs/cost.md).

``n_bits`` and ``rounding_threshold_bits`` (and other per-op settings) take, next to their
global forms, a mapping from op names to values. An op is named by its ONNX node name (e.g.
``"/fc1/Gemm"``) or by its output tensor (the name the bit-width and cost reports show, e.g.
``"/fc1/Gemm_output_0"``); the optional ``"default"`` entry applies to the ops not named.

:class:`PerOp` holds such a setting; :func:`per_op` recognises one; :meth:`PerOp.check`
raises :class:`~fhequant.errors.UnknownOpError` naming the unknown names and listing valid
ones; :meth:`PerOp.value_for` resolves the value of one op from its names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhequant.errors import UnknownOpError

__all__ = ["DEFAULT_KEY", "PerOp", "per_op"]

#: The key of the value for the ops a per-op mapping does not name.
DEFAULT_KEY = "default"
_SHOWN = 12


@dataclass(frozen=True)
class PerOp:
    """A setting given per op.

    Attributes:
        what: the setting's name (for errors), e.g. "n_bits".
        default: the value of the ops not named.
        values: op name -> value.
    """

    what: str
    default: Any
    values: Mapping[str, Any]

    def check(self, ops: Iterable[Sequence[str]]) -> None:
        """Raise UnknownOpError if a named op is not among ``ops``.

        Args:
            ops: the names of each op of the model (node name, output tensor, ...).

        Raises:
            UnknownOpError: naming the unknown op names and listing valid ones.
        """
        known: list[str] = []
        for names in ops:
            known.extend(n for n in names if n)
        unknown = sorted(k for k in self.values if k not in set(known))
        if unknown:
            shown = ", ".join(repr(n) for n in known[:_SHOWN])
            more = f" and {len(known) - _SHOWN} more" if len(known) > _SHOWN else ""
            raise UnknownOpError(
                f"{self.what}: no op named {unknown}; name ops by their node name or output "
                f"tensor (as the bit-width and cost reports show them): {shown}{more}",
                unknown,
            )

    def value_for(self, names: Sequence[str]) -> Any:
        """The value of the op known by ``names`` (the first one named wins), else default."""
        for n in names:
            if n in self.values:
                return self.values[n]
        return self.default

    def map(self, fn: Callable[[Any], Any]) -> PerOp:
        """The same setting with ``fn`` applied to every value (validation, normalisation)."""
        return PerOp(self.what, fn(self.default), {k: fn(v) for k, v in self.values.items()})


def per_op(
    value: Any, what: str, is_global: Callable[[Mapping[str, Any]], bool], default: Any
) -> PerOp | None:
    """The PerOp of a per-op mapping, or None if ``value`` is a global form.

    Args:
        value: the user's value.
        what: the setting's name (for errors).
        is_global: tells the mappings that are global forms of the setting (e.g. the
            ``{"op_inputs": ..}`` dict of n_bits) from per-op ones.
        default: the value of unnamed ops when the mapping has no "default" entry.

    Returns:
        The PerOp, or None (use ``value`` as before).
    """
    if isinstance(value, PerOp):
        return value
    if not isinstance(value, Mapping) or is_global(value):
        return None
    values = {str(k): v for k, v in value.items() if k != DEFAULT_KEY}
    return PerOp(what, value.get(DEFAULT_KEY, default), values)
