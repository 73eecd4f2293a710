"""The ``calibration=`` argument: which statistic chooses each range (docs/calibration.md).

Forms (``None`` or ``"minmax"`` is the default and leaves every integer as it was):

* a method name: ``"minmax"``, ``"percentile"``, ``"mse"``, ``"entropy"`` (or any registered
  statistic, :mod:`fhequant.quantization.tensor_stats`);
* a method with parameters: ``{"method": "percentile", "percentile": 99.9}`` or a
  :class:`~fhequant.quantization.StatisticSpec`;
* per kind and per op: ``{"activations": M, "weights": M, "per_channel": bool or mode,
  "bias_correction": bool, "ops": {"node name": M or {"activations": M, ...}}}``; an op's
  entry overrides the model's for the keys it names.

``per_channel``: Gemm / MatMul / Conv weights quantized per output channel (the weight
statistic, min/max by default, chooses each channel's range): ``True`` or ``"symmetric"``,
one scale per channel (zero point 0); ``"asymmetric"``, one scale and one zero point per
channel. The linear ops already rescale by a per-channel weight scale (as for Brevitas
per-channel weights) and subtract per-channel zero points from the constant weight integers,
so the rescale folds into the output table lookup and the PBS count does not change.
``bias_correction``: the bias of a Gemm / MatMul / Conv absorbs the mean output shift that
weight quantization causes, ``(W - dequant(Wq)) · E[x]`` with ``E[x]`` the mean of the op's
quantized calibration input (exact integer sums: the same for any batch split).

A bare method applies to the activations (op outputs) and, when the statistic may choose
weight ranges (``for_weights``: minmax, percentile, mse; not entropy), to the weights of
Gemm / MatMul / Conv. Graph inputs, shape ops (Reshape, Flatten, Concat, ...: they move
values already on their producers' grids) and ops whose calibration is not a reduction of their
float output (Div's divider, Brevitas Quant, ...) keep min/max.

:func:`resolve_per_op` is the small, separate per-op-name resolver (op names checked against the
graph, unknown ones a typed error naming them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fhequant.errors import CalibrationConfigError, FhequantError
from fhequant.quantization.tensor_stats import STATISTICS, StatisticSpec, make_statistic

__all__ = [
    "PER_CHANNEL_MODES",
    "WEIGHT_OPS",
    "CalibrationPlan",
    "OpCalibration",
    "parse_method",
    "resolve_calibration",
    "resolve_per_op",
]

#: Op types whose input 1 (the weights) a weight statistic calibrates.
WEIGHT_OPS = frozenset({"Gemm", "MatMul", "Conv"})
_KINDS = ("activations", "weights")
_FLAGS = ("per_channel", "bias_correction")

_T = TypeVar("_T")


@dataclass(frozen=True)
class OpCalibration:
    """The statistics of one op: of its output and of its weights (None: min/max), whether
    its weights are quantized per output channel (False, "symmetric" or "asymmetric") and
    whether its bias is corrected."""

    activations: StatisticSpec | None = None
    weights: StatisticSpec | None = None
    per_channel: bool | str = False
    bias_correction: bool = False


@dataclass(frozen=True)
class CalibrationPlan:
    """The resolved ``calibration=`` argument."""

    default: OpCalibration = OpCalibration()
    per_op: dict[str, OpCalibration] = field(default_factory=dict)

    def for_op(self, name: str) -> OpCalibration:
        """The statistics of the op (node) ``name``."""
        return self.per_op.get(name, self.default)

    @property
    def is_minmax(self) -> bool:
        """Every range is min/max (the default path)."""
        return all(c == OpCalibration() for c in (self.default, *self.per_op.values()))


def parse_method(spec: Any, where: str) -> StatisticSpec | None:
    """A method name, ``{"method": name, **params}`` or StatisticSpec; None for min/max.

    Raises:
        CalibrationConfigError: an unknown method or bad parameters (checked by making one).
    """
    if spec is None:
        return None
    if isinstance(spec, StatisticSpec):
        method = spec
    elif isinstance(spec, str):
        method = StatisticSpec(spec)
    elif isinstance(spec, Mapping) and "method" in spec:
        params = {str(k): v for k, v in spec.items() if k != "method"}
        method = StatisticSpec(str(spec["method"]), params)
    else:
        raise CalibrationConfigError(
            f"{where}: expected a method name among {sorted(STATISTICS)}, a dict with a "
            f"'method' key, or a StatisticSpec; got {spec!r}"
        )
    if method.name not in STATISTICS:
        raise CalibrationConfigError(
            f"{where}: unknown calibration method {method.name!r}; known: {sorted(STATISTICS)}"
        )
    try:
        make_statistic(method.name, 1, **method.params)
    except FhequantError as exc:
        raise CalibrationConfigError(f"{where}: {exc}") from exc
    return None if method.name == "minmax" and not method.params else method


#: The values ``per_channel`` takes, and what each resolves to.
PER_CHANNEL_MODES: dict[Any, Any] = {
    False: False,
    True: "symmetric",
    "symmetric": "symmetric",
    "asymmetric": "asymmetric",
}


def _per_channel(value: Any, where: str) -> Any:
    """False, "symmetric" or "asymmetric" (True is "symmetric")."""
    if isinstance(value, bool) or (isinstance(value, str) and value in PER_CHANNEL_MODES):
        return PER_CHANNEL_MODES[value]
    raise CalibrationConfigError(
        f"{where} must be a bool, 'symmetric' or 'asymmetric' (True is 'symmetric'), got {value!r}"
    )


def _parse_op(spec: Any, base: OpCalibration, where: str) -> OpCalibration:
    """One op's (or the model's) statistics; kinds it does not name come from ``base``."""
    if isinstance(spec, Mapping) and "method" not in spec:
        unknown = sorted(str(k) for k in spec if k not in (*_KINDS, *_FLAGS))
        if unknown:
            raise CalibrationConfigError(
                f"{where}: unknown key(s) {unknown}; use 'activations', 'weights', "
                "'per_channel', 'bias_correction' (or 'method' with its parameters)"
            )
        flags: dict[str, Any] = {}
        for flag in _FLAGS:
            value = spec.get(flag, getattr(base, flag))
            if flag == "per_channel":
                flags[flag] = _per_channel(value, f"{where}['per_channel']")
            elif not isinstance(value, bool):
                raise CalibrationConfigError(f"{where}['{flag}'] must be a bool, got {value!r}")
            else:
                flags[flag] = value
        activations = (
            parse_method(spec["activations"], f"{where}['activations']")
            if "activations" in spec
            else base.activations
        )
        weights = base.weights
        if "weights" in spec:
            weights = parse_method(spec["weights"], f"{where}['weights']")
            if weights is not None and not weights.for_weights:
                raise CalibrationConfigError(
                    f"{where}['weights']: the {weights.name} statistic is for activations only"
                )
        return OpCalibration(activations, weights, **flags)
    method = parse_method(spec, where)
    weights = method if method is None or method.for_weights else None
    return OpCalibration(method, weights, base.per_channel, base.bias_correction)


def resolve_per_op(
    mapping: Any, parse: Callable[[Any, str], _T], known: Iterable[str], what: str
) -> dict[str, _T]:
    """Resolve a per-op mapping ``{op name: setting}`` against the ops of a model.

    Args:
        mapping: the user's mapping (None: empty).
        parse: turns one setting into its resolved value (``parse(value, where)``).
        known: the op (node) names of the model.
        what: the argument's name, for errors.

    Raises:
        CalibrationConfigError: not a mapping, or names that are not ops of the model (all
            named in the message).
    """
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise CalibrationConfigError(
            f"{what}: per-op settings must be a dict {{op name: setting}}, got {mapping!r}"
        )
    names = set(known)
    unknown = sorted(str(k) for k in mapping if k not in names)
    if unknown:
        raise CalibrationConfigError(
            f"{what}: no op named {unknown} in the model; its ops are {sorted(names)}"
        )
    return {str(k): parse(v, f"{what}[{k!r}]") for k, v in mapping.items()}


def resolve_calibration(calibration: Any, op_names: Iterable[str]) -> CalibrationPlan:
    """Resolve a ``calibration=`` argument for a model of the given op (node) names.

    Raises:
        CalibrationConfigError: as described in the module docstring.
    """
    if calibration is None:
        return CalibrationPlan()
    if isinstance(calibration, Mapping) and "method" not in calibration:
        unknown = sorted(str(k) for k in calibration if k not in (*_KINDS, *_FLAGS, "ops"))
        if unknown:
            raise CalibrationConfigError(
                f"calibration: unknown key(s) {unknown}; use 'activations', 'weights', "
                "'per_channel', 'bias_correction' and 'ops' (or 'method' with its parameters)"
            )
        kinds = {k: v for k, v in calibration.items() if k != "ops"}
        default = _parse_op(kinds, OpCalibration(), "calibration")
        per_op = resolve_per_op(
            calibration.get("ops"),
            lambda spec, where: _parse_op(spec, default, where),
            op_names,
            "calibration['ops']",
        )
        return CalibrationPlan(default, per_op)
    return CalibrationPlan(_parse_op(calibration, OpCalibration(), "calibration"))
