"""The registry of float ONNX op implementations: ``ONNX_OPS`` maps an op type to an ``OpSpec``.

How to look an op up and call it::

    from fhequant.onnx import ONNX_OPS

    spec = ONNX_OPS["Conv"]  # key: the op type ("domain.op_type" off the default domain)
    attrs = spec.resolve_attrs({"strides": (2, 2)})  # defaults filled in, unknown names rejected
    y = spec.fn(x, w, b, **attrs)  # graph semantics (what onnxruntime returns)
    y = spec.quant_fn(x, w, b, **attrs)  # docs/contract.md §5.3 form, used by calibration

Inputs are passed positionally in ``spec.inputs`` order; an absent optional input is ``None``
(trailing ``None`` may be left out) and a variadic input (the last one) takes all remaining
arguments. Every implementation returns one numpy array, except the few multi-output ops
(``spec.n_outputs`` > 1, e.g. Split), which return a tuple. ``spec.raw_inputs`` names the
inputs that are shapes, indices or axes (never quantized) and ``spec.raw_output`` is True when
the output is such a value (Shape).

``fn`` and ``quant_fn`` differ only where docs/contract.md §5.3 deliberately departs from ONNX
semantics: comparisons and Not/And/Or/Xor (bool vs float64 0/1), Where (selection vs
c·t + (1 - c)·f), Cast to BOOL/FLOAT/DOUBLE (exact dtype vs float64), Div (IEEE and truncating
integer division vs a / where(b != 0, b, 1) and floor division), Log (log x vs log max(x, 1e-8)),
PRelu (ONNX vs min(0, slope·x) + max(0, x), which differ for negative slopes), Conv/
ConvTranspose/AveragePool (the inputs' dtype vs float64 with a float32 padding buffer) and Pow
(the base's dtype vs numpy promotion). Everything else (Sigmoid = exp(-logaddexp(0, -x)),
Softplus = log(exp(x) + 1), Gemm in float32, ...) uses the §5.3 form in both, which matches
onnxruntime within float tolerance on valid inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from fhequant.errors import OnnxImportError

__all__ = [
    "ONNX_OPS",
    "REQUIRED",
    "InputSpec",
    "OpSpec",
    "register",
]

InputKind = Literal["required", "optional", "variadic"]


class _Required:
    """Sentinel default of an attribute the node must set."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class InputSpec:
    """One input slot of an op.

    Attributes:
        name: the ONNX input name (e.g. "X", "axes").
        kind: "required", "optional" or "variadic" (only the last input can be variadic).
    """

    name: str
    kind: InputKind = "required"


@dataclass(frozen=True, eq=False)
class OpSpec:
    """An ONNX op type, its float implementations and the metadata a quantized layer needs.

    Attributes:
        name: the registry key ("Relu", "onnx.brevitas.Quant").
        fn: the float implementation with ONNX graph semantics.
        quant_fn: the float implementation used by calibration (docs/contract.md §5.3); often
            ``fn``.
        inputs: the input slots, in order.
        attrs: attribute name -> default (``REQUIRED`` when the node must set it).
        raw_inputs: names of inputs that are shapes, indices or axes: never quantized.
        raw_output: True when the output is raw (Shape).
        n_outputs: the number of outputs (-1: as many as the node declares).
    """

    name: str
    fn: Callable[..., Any]
    quant_fn: Callable[..., Any]
    inputs: tuple[InputSpec, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    raw_inputs: frozenset[str] = frozenset()
    raw_output: bool = False
    n_outputs: int = 1

    @property
    def input_names(self) -> tuple[str, ...]:
        """The input names in order."""
        return tuple(i.name for i in self.inputs)

    @property
    def n_required(self) -> int:
        """How many leading inputs are required."""
        return sum(1 for i in self.inputs if i.kind == "required")

    @property
    def is_variadic(self) -> bool:
        """True when the last input takes any number of tensors."""
        return bool(self.inputs) and self.inputs[-1].kind == "variadic"

    def raw_input_indices(self, n_given: int) -> tuple[int, ...]:
        """Positions (among ``n_given`` node inputs) of the raw inputs."""
        names = self.input_names
        return tuple(i for i in range(min(n_given, len(names))) if names[i] in self.raw_inputs)

    def resolve_attrs(
        self, given: Mapping[str, Any], node: str = "?", n_outputs: int | None = None
    ) -> dict[str, Any]:
        """Fill in attribute defaults.

        Args:
            given: the attributes set on the node.
            node: the node name, for error messages.
            n_outputs: the node's output count (fills num_outputs of variable-output ops).

        Returns:
            A dict with one entry per attribute of the op.

        Raises:
            OnnxImportError: an unknown attribute, or a required one missing.
        """
        unknown = sorted(set(given) - set(self.attrs))
        if unknown:
            raise OnnxImportError(
                f"node {node!r} ({self.name}): unknown attribute(s) {unknown}; "
                f"{self.name} accepts {sorted(self.attrs)}"
            )
        _check_given(self.name, given, node)
        out = dict(self.attrs)
        out.update(given)
        if self.n_outputs == -1 and "num_outputs" in out and out["num_outputs"] is None:
            out["num_outputs"] = n_outputs
        missing = sorted(k for k, v in out.items() if v is REQUIRED)
        if missing:
            raise OnnxImportError(
                f"node {node!r} ({self.name}): required attribute(s) {missing} not set"
            )
        return out


#: Attributes that are flags: ONNX gives them as ints, 0 or 1 (onnxruntime reads other
#: values inconsistently: keepdims=2 as 0, ceil_mode=-2 as 0, fmod=5 refused).
_FLAGS = frozenset(
    {
        "allowzero",
        "ceil_mode",
        "count_include_pad",
        "fmod",
        "keepdims",
        "noop_with_empty_axes",
        "saturate",
        "storage_order",
        "training_mode",
        "transA",
        "transB",
    }
)

#: Window geometry: when set, one value per spatial axis (pads: two), never an empty list.
_GEOMETRY = frozenset({"dilations", "kernel_shape", "output_padding", "pads", "strides"})


def _check_given(op: str, given: Mapping[str, Any], node: str) -> None:
    """Reject flag values other than 0/1 and empty window-geometry lists (issue 15, found by
    the attribute fuzz of tests/onnx_import/test_hardening_attribute_fuzz.py)."""
    for name, value in given.items():
        if name in _FLAGS and (
            isinstance(value, float | str | bytes | list | tuple) or value not in (0, 1)
        ):
            raise OnnxImportError(
                f"node {node!r} ({op}): attribute {name!r} is a flag, 0 or 1, got {value!r}"
            )
        if name in _GEOMETRY and isinstance(value, list | tuple) and len(value) == 0:
            raise OnnxImportError(
                f"node {node!r} ({op}): attribute {name!r} is an empty list; give one value per "
                "spatial axis (two per axis for pads) or leave it out"
            )


_OPS: dict[str, OpSpec] = {}
ONNX_OPS: Mapping[str, OpSpec] = MappingProxyType(_OPS)


def _parse_inputs(inputs: str) -> tuple[InputSpec, ...]:
    """Parse "X, W, B?, inputs*" into input specs (? optional, * variadic)."""
    out = []
    for raw in inputs.split(","):
        name = raw.strip()
        if not name:
            continue
        if name.endswith("?"):
            out.append(InputSpec(name[:-1], "optional"))
        elif name.endswith("*"):
            out.append(InputSpec(name[:-1], "variadic"))
        else:
            out.append(InputSpec(name, "required"))
    return tuple(out)


def register(
    name: str,
    inputs: str,
    attrs: Mapping[str, Any] | None = None,
    *,
    raw: tuple[str, ...] = (),
    raw_output: bool = False,
    quant_fn: Callable[..., Any] | None = None,
    n_outputs: int = 1,
    aliases: tuple[str, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a float implementation under ``name`` (and ``aliases``).

    Args:
        name: the op type, "domain.op_type" off the default domain.
        inputs: the input slots, e.g. "X, W, B?" ("?" optional, "*" variadic).
        attrs: attribute defaults (``REQUIRED`` for mandatory ones).
        raw: names of raw inputs (shapes, indices, axes).
        raw_output: whether the output is raw.
        quant_fn: the docs/contract.md §5.3 implementation when it differs from the decorated one.
        n_outputs: number of outputs (-1 = variable).
        aliases: other registry keys for the same op (e.g. the qonnx domain of Quant).

    Returns:
        The decorator, which returns the function unchanged.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        specs = _parse_inputs(inputs)
        unknown_raw = set(raw) - {s.name for s in specs}
        if unknown_raw:  # a bug in the registry itself, not user input
            raise RuntimeError(f"{name}: raw inputs {sorted(unknown_raw)} not among its inputs")
        for key in (name, *aliases):
            _OPS[key] = OpSpec(
                name=key,
                fn=fn,
                quant_fn=quant_fn if quant_fn is not None else fn,
                inputs=specs,
                attrs=MappingProxyType(dict(attrs or {})),
                raw_inputs=frozenset(raw),
                raw_output=raw_output,
                n_outputs=n_outputs,
            )
        return fn

    return deco


def as_float64_01(x: np.ndarray) -> np.ndarray:
    """A bool (or 0/1) array as float64 0/1, the §5.3 form of logical results."""
    return np.asarray(x).astype(np.float64)
