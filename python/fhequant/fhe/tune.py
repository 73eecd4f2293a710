"""Let fhequant choose the bits: ``fhequant.tune`` (``n_bits="auto"``, ``fhequant tune``).

The search minimises the estimated FHE latency (the cost model of :mod:`fhequant.fhe.cost`)
over per-op ``n_bits``, per-op ``rounding_threshold_bits`` and ``p_error`` subject to

* every table-lookup input fitting concrete's 16 bits (observed, or worst case with
  ``accumulator_bounds="worst_case"``), and
* the metric on the validation data (default: top-1 agreement with the float model; accuracy
  when labels are given) staying within ``accuracy_budget`` points of the float model's.

Calibration and the clear forward are cheap, so the bits are searched on the clear path, which
computes exactly what the circuit computes except for table-lookup errors:

1. uniform settings (every op at n bits, at most ``default_bits``; the mixing ops rounded
   to r bits), from wide to narrow;
2. per-op refinement from the best uniform setting: one op's rounding or n_bits one bit
   lower at a time, the moves tried in order of the cost they save, the first that keeps
   the metric in budget taken;
3. what the clear path cannot see, measured with ``fhe="simulate"`` (table-lookup errors
   drawn as concrete would make them; :class:`_SimulatedPhase`): the approximate rounding
   method, then p_error: 1e-2 first, in budget 5e-2 next, else 1e-3; the largest class in
   budget wins (none: the default 2**-40), and its simulated metric is the confirmation.

Everything runs within ``time_budget`` seconds (the phases share it; the search stops where
it is when time runs out and keeps the best feasible setting found). The result holds the
module (compiled), its settings and the trade-off table (the Pareto front of estimated cost
against the metric), which ``TuneResult.plot`` draws as a PNG.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fhequant.errors import BitWidthError, CompilationError, ConfigurationError, TuningError
from fhequant.fhe.cost import CostReport, cost_report
from fhequant.fhe.cost_model import CostModel, load_cost_model
from fhequant.fhe.tune_result import Candidate, TuneResult, top1_agreement
from fhequant.quantized.build import _numpy_module, build_quantized_module
from fhequant.quantized.streaming import as_numpy

__all__ = ["Candidate", "TuneResult", "top1_agreement", "tune"]

#: p_error classes tried for the simulated phase, largest (cheapest) first.
P_ERRORS = (0.05, 0.01, 1e-3)
_UNIFORM = ((8, 8), (7, 7), (6, 6), (6, 5), (5, 5), (5, 4), (4, 4), (4, 3), (3, 3), (2, 2))


class _Search:
    """The state of one tune run (candidates, clock, data)."""

    def __init__(self, model: Any, calib: Any, x_val: Any, target: Any, **opts: Any) -> None:
        self.model = model
        self.calib = calib
        self.x_val = x_val
        self.target = target
        self.metric_fn: Callable[[np.ndarray, np.ndarray], float] = opts["metric"]
        self.floor: float = opts["floor"]
        self.default_bits: int = opts["default_bits"]
        self.bounds: str = opts["accumulator_bounds"]
        self.cost_model: CostModel = opts["cost_model"]
        self.deadline: float = opts["deadline"]
        self.say: Callable[[str], None] = opts["progress"]
        self.fixed_bits: int | None = opts["fixed_bits"]
        self.fixed_rounding: Any = opts["fixed_rounding"]
        self.build_opts: dict[str, Any] = opts["build_opts"]
        self.compile_opts: dict[str, Any] = opts["compile_opts"]
        self.calib_tuple: tuple[np.ndarray, ...] = opts["calib_tuple"]
        self.candidates: list[Candidate] = []
        self.reports: dict[int, CostReport] = {}
        self.ops: list[str] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def build(self, nb: dict[str, int], rb: dict[str, int | None]) -> Any:
        n_bits: Any = self.fixed_bits if self.fixed_bits is not None else nb
        rounding: Any = self.fixed_rounding if self.fixed_rounding != "auto" else rb
        if isinstance(n_bits, dict):
            n_bits = {"default": self.default_bits, **n_bits}
        if isinstance(rounding, dict):
            rounding = {"default": None, **rounding}
        return build_quantized_module(
            self.model, self.calib, n_bits=n_bits, rounding_threshold_bits=rounding,
            **self.build_opts,
        )  # fmt: skip

    def compile(self, module: Any, p_error: float | None) -> None:
        """Compile with the caller's compile options (configuration, artifacts, ...)."""
        module.compile(self.calib_tuple, p_error=p_error, **self.compile_opts)

    def evaluate(
        self, nb: dict[str, int], rb: dict[str, int | None], phase: str, cost: bool = True
    ) -> Candidate:
        """Build the module of a setting, measure its metric (clear path) and, when the
        metric is in budget and ``cost``, its estimated cost (cost_report)."""
        module = self.build(nb, rb)
        metric = self.metric_fn(np.asarray(module.forward(*self.x_val)), self.target)
        cand = Candidate(dict(nb), dict(rb), None, metric, float("inf"), float("inf"), 0, phase)
        self.candidates.append(cand)
        if cost and metric >= self.floor:
            self.price(cand, module)
        self.say(
            f"[{phase}] metric {100 * metric:.2f}% (floor {100 * self.floor:.2f}%), "
            f"est. {cand.latency_s:.3g} s/sample, widest lookup {cand.max_bits} bits"
        )
        return cand

    def price(self, cand: Candidate, module: Any = None) -> None:
        """Fill a candidate's estimated cost (inf when it does not fit 16 bits)."""
        module = module if module is not None else self.build(cand.n_bits, cand.rounding)
        try:
            report = cost_report(
                module, self.calib, accumulator_bounds=self.bounds, cost_model=self.cost_model,
                inputs_encryption_status=self.compile_opts["inputs_encryption_status"],
            )  # fmt: skip
        except BitWidthError:
            return
        cand.max_bits = report.max_tlu_bits
        self.reports[id(cand)] = report
        if report.fits:
            cand.complexity, cand.latency_s = report.complexity, report.latency_s


def _mixing_ops(module: Any) -> list[str]:
    return [name for name, (_, op) in module.quant_layers_dict.items() if op.is_mixing]


def _feasible(c: Candidate, floor: float) -> bool:
    return c.metric >= floor and bool(np.isfinite(c.complexity))


def _uniform_phase(s: _Search) -> Candidate | None:
    """Uniform settings from wide to narrow (metric only; unrounded first), then the cost of
    the narrowest two in budget; a setting that does not fit 16 bits is passed over."""
    passing: list[Candidate] = []
    seen: set[str] = set()
    # no rounding at all comes first: when the accumulators already fit, it costs no accuracy
    for n, r in ((_UNIFORM[0][0], None), *_UNIFORM):
        if s.left() <= 0:
            break
        n = s.fixed_bits if isinstance(s.fixed_bits, int) else n
        if s.fixed_rounding != "auto":
            r = s.fixed_rounding if isinstance(s.fixed_rounding, int) else r
        nb = {"default": min(n, s.default_bits), **{op: n for op in s.ops}}
        rb: dict[str, int | None] = {op: r for op in s.ops}
        key = repr((nb, rb))
        if key in seen:
            continue
        seen.add(key)
        c = s.evaluate(nb, rb, "uniform", cost=False)
        if c.metric >= s.floor:
            passing.append(c)
        elif passing:
            break  # narrower uniform settings only lose more
    best: Candidate | None = None
    for c in reversed(passing):
        if s.left() <= 0 and best is not None:
            break
        s.price(c)
        s.say(f"[uniform] est. {c.latency_s:.3g} s/sample, widest lookup {c.max_bits} bits")
        if np.isfinite(c.complexity) and (best is None or c.complexity < best.complexity):
            best = c
        if best is not None and c is not passing[-1]:
            break
    return best


def _moves(s: _Search, c: Candidate) -> list[tuple[dict[str, int], dict[str, int | None]]]:
    """One-bit-narrower moves of one op, the largest estimated saving first."""
    report = s.reports.get(id(c))
    model = s.cost_model
    scored = []
    for op in s.ops:
        lookups = report.row(op).by_kind.get("tlu", 0) if report and _has(report, op) else 1
        r = c.rounding.get(op)
        n = c.n_bits[op]
        step = model.complexity("round", 12, None)
        if s.fixed_rounding == "auto" and r is not None and r > 2:
            gain = lookups * (
                model.complexity("tlu", r, None) - model.complexity("tlu", r - 1, None)
            )
            scored.append((gain - lookups * step, dict(c.n_bits), {**c.rounding, op: r - 1}))
        if s.fixed_bits is None and n > 2:
            scored.append((2 * lookups * step, {**c.n_bits, op: n - 1}, dict(c.rounding)))
    scored.sort(key=lambda t: -t[0])
    return [(nb, rb) for _, nb, rb in scored]


def _has(report: CostReport, op: str) -> bool:
    return any(r.name == op for r in report.rows)


def _per_op_phase(s: _Search, start: Candidate, min_left: float) -> Candidate:
    """Take the first one-bit move (largest estimated saving first) that keeps the metric in
    budget and lowers the estimated cost; repeat until none does or time runs out."""
    best = start
    tried: set[str] = set()
    improved = True
    while improved and s.left() > min_left:
        improved = False
        for nb, rb in _moves(s, best):
            key = repr((sorted(nb.items()), sorted(rb.items())))
            if key in tried or s.left() <= min_left:
                continue
            tried.add(key)
            c = s.evaluate(nb, rb, "per-op")
            if _feasible(c, s.floor) and c.complexity < best.complexity:
                best, improved = c, True
                break
    return best


def _simulated_metric(s: _Search, module: Any) -> float:
    return s.metric_fn(np.asarray(module.forward(*s.x_val, fhe="simulate")), s.target)


def tune(
    model: Any,
    calibration_data: Any,
    validation_data: Any = None,
    labels: Any = None,
    *,
    metric: Callable[[np.ndarray, np.ndarray], float] | None = None,
    accuracy_budget: float = 1.0,
    time_budget: float = 60.0,
    n_bits: Any = "auto",
    rounding_threshold_bits: Any = "auto",
    p_error: Any = "auto",
    accumulator_bounds: str = "observed",
    default_bits: int = 8,
    cost_model: CostModel | None = None,
    progress: Callable[[str], None] | bool = True,
    calibration: Any = None,
    reduce_sum_copy: bool = False,
    configuration: Any = None,
    artifacts: Any = None,
    show_mlir: bool = False,
    global_p_error: float | None = None,
    inputs_encryption_status: Any = None,
    verbose: bool = False,
) -> TuneResult:
    """Search per-op n_bits, per-op rounding and p_error for the cheapest FHE circuit within
    an accuracy budget (the module docstring gives the method).

    Args:
        model: a torch module, an ONNX model (proto, bytes or path) or a NumpyModule.
        calibration_data: the calibration (and compile) inputs, one array per input.
        validation_data: the inputs the metric is measured on (default: the calibration
            data).
        labels: validation labels; with them the default metric is accuracy, else top-1
            agreement with the float model.
        metric: ``metric(outputs, target) -> float`` in [0, 1], target the labels or the
            float model's outputs (default :func:`top1_agreement`).
        accuracy_budget: points (percent) of metric the module may lose against the float
            model.
        time_budget: seconds for the whole search (compiles included).
        n_bits: "auto" to search, or a fixed n_bits (int or dict) to search the rest.
        rounding_threshold_bits: "auto" to search, or a fixed value (None: no rounding).
        p_error: "auto" to search the classes of :data:`P_ERRORS`, or a fixed value.
        accumulator_bounds: "observed" or "worst_case" (the 16-bit constraint and compile).
        default_bits: the widest n_bits of the ops that are not mixing ops (activations,
            shapes); a uniform setting of n bits gives them min(n, default_bits).
        cost_model: the cost model (default: :func:`load_cost_model`).
        progress: print one line per evaluated setting (True), a callable, or False.
        calibration: the range statistics of every candidate (as build_quantized_module).
        reduce_sum_copy: as build_quantized_module, for every candidate.
        configuration: a concrete Configuration for every compile of the search.
        artifacts: a concrete DebugArtifacts; it ends up holding the chosen module's compile
            (every compile of the search writes it, the chosen one last).
        show_mlir: print the MLIR of every compile of the search (the chosen one last).
        global_p_error: the circuit's error probability instead of a per-lookup p_error
            (with ``p_error`` None; it cannot be combined with ``p_error="auto"``).
        inputs_encryption_status: as compile; the cost estimates count only what it encrypts.
        verbose: concrete's compilation details for every compile.

    Returns:
        The TuneResult (the module compiled with the chosen setting).

    Raises:
        TuningError: no setting fits 16 bits within the budget; says how close the best came.
        ConfigurationError: ``global_p_error`` with ``p_error="auto"``.
    """
    if global_p_error is not None and p_error is not None:
        raise ConfigurationError(
            f"tune: global_p_error={global_p_error!r} cannot be combined with "
            f"p_error={p_error!r} (the search would set a per-lookup p_error); give "
            "p_error=None to compile with the global error probability, or drop global_p_error"
        )
    start = time.monotonic()
    say = progress if callable(progress) else (print if progress else (lambda _: None))
    calib = _as_tuple(calibration_data)
    x_val = _as_tuple(validation_data) if validation_data is not None else calib
    numpy_model = _numpy_module(model, calib[0] if len(calib) == 1 else calib)
    float_out = np.asarray(numpy_model.forward(*x_val))
    metric_fn = metric or top1_agreement
    target = np.asarray(as_numpy(labels)) if labels is not None else float_out
    reference = metric_fn(float_out, target)
    floor = reference - accuracy_budget / 100.0
    s = _Search(
        numpy_model, calib if len(calib) > 1 else calib[0], x_val, target,
        metric=metric_fn, floor=floor, default_bits=default_bits,
        accumulator_bounds=accumulator_bounds, cost_model=cost_model or load_cost_model(),
        deadline=start + float(time_budget), progress=say,
        fixed_bits=None if n_bits == "auto" else n_bits,
        fixed_rounding=rounding_threshold_bits,
        build_opts={"calibration": calibration, "reduce_sum_copy": reduce_sum_copy},
        compile_opts={
            "configuration": configuration, "artifacts": artifacts, "show_mlir": show_mlir,
            "global_p_error": global_p_error, "verbose": verbose,
            "inputs_encryption_status": inputs_encryption_status,
            "accumulator_bounds": accumulator_bounds,
        },
        calib_tuple=calib,
    )  # fmt: skip
    say(f"float model metric {100 * reference:.2f}%; budget {accuracy_budget} points")
    s.ops = _mixing_ops(s.build({}, {}))
    uniform = _uniform_phase(s)
    if uniform is None:
        _no_setting(s)
    assert uniform is not None
    p_phase = p_error == "auto"
    best = _per_op_phase(s, uniform, 0.5 * time_budget if p_phase else 0.1 * time_budget)
    # the per-op phase spends the clear metric down to the floor; the uniform setting keeps
    # a margin that approximate rounding may need, so it is simulated first
    settings = ([uniform] if uniform is not best else []) + [best]
    rounded = rounding_threshold_bits == "auto" and any(
        r is not None for r in best.rounding.values()
    )
    sim_phase = _SimulatedPhase(s, settings, time_budget)
    method, chosen_p, module, sim, best = sim_phase.run(p_phase, p_error, rounded)
    n_map: Any
    r_map: Any
    n_map, r_map = best.settings(default_bits)
    if s.fixed_bits is not None:
        n_map = s.fixed_bits
    if rounding_threshold_bits != "auto":
        r_map = rounding_threshold_bits
    elif method == _APPROX:
        r_map = _approximate(r_map)
    final_s, step_s = sim_phase.final_s, sim_phase.step_s
    report = cost_report(module, p_error=chosen_p, cost_model=s.cost_model)
    say(f"chosen: simulated metric {100 * sim:.2f}%, est. {report.latency_s:.3g} s/sample")
    return TuneResult(
        module, n_map, r_map, chosen_p, sim, reference, s.candidates, report,
        time.monotonic() - start,
        {"floor": floor, "final_compile_s": final_s, "step_s": step_s, "rounding_method": method},
    )  # fmt: skip


_APPROX = "APPROXIMATE"


def _approximate(rounding: dict[str, Any]) -> dict[str, Any]:
    """A per-op rounding mapping with the approximate method."""
    return {k: v if v is None else {"n_bits": v, "method": _APPROX} for k, v in rounding.items()}


class _SimulatedPhase:
    """What the clear path cannot see, measured with ``fhe="simulate"``: p_error, and the
    approximate rounding method (free: the next lookup's modulus switch does it, but it may
    round the other way near a tie).

    Steps are (method, p_error, setting) triples: when the setting rounds, approximate
    rounding at 1e-2 first, on the uniform setting (which kept a margin) then on the per-op
    one, then exact rounding on the per-op setting; from the first in budget a larger p_error
    while in budget, else a smaller one until one is. The chosen step's simulated metric is
    the confirmation: each step has its own module, so the chosen one keeps the circuit that
    was simulated (it is compiled again, deterministically, only for the caller's
    ``artifacts`` when another step was compiled last).
    """

    def __init__(self, s: _Search, settings: list[Candidate], time_budget: float) -> None:
        self.s, self.settings, self.budget = s, settings, time_budget
        self.modules: dict[tuple[str, int, Any], Any] = {}
        self.measured: dict[tuple[str, Any, int], float] = {}
        self.final_s = self.step_s = 0.0

    def module(self, method: str, i: int, p: Any) -> Any:
        """The module of one step: one per (method, setting, p_error), so the chosen step's
        module keeps its compiled circuit (building is cheap, compiling is not)."""
        if (method, i, p) not in self.modules:
            c = self.settings[i]
            rb: dict[str, Any] = dict(c.rounding)
            self.modules[(method, i, p)] = self.s.build(
                c.n_bits, _approximate(rb) if method == _APPROX else rb
            )
        return self.modules[(method, i, p)]

    def step(self, method: str, p: float | None, i: int) -> float | None:
        """Compile and simulate one step; None when it does not compile."""
        s, c = self.s, self.settings[i]
        start = time.monotonic()
        module = self.module(method, i, p)
        try:
            s.compile(module, p)
        except CompilationError:
            return None
        sim = _simulated_metric(s, module)
        self.measured[(method, p, i)] = sim
        report = cost_report(module, p_error=p, cost_model=s.cost_model)
        s.candidates.append(
            Candidate(
                c.n_bits, c.rounding, p, sim, report.complexity, report.latency_s,
                report.max_tlu_bits, "p_error" if method != _APPROX else "approximate",
                simulated=True,
            )
        )  # fmt: skip
        self.step_s = max(self.step_s, time.monotonic() - start)
        s.say(
            f"[{method.lower()} rounding, p_error {p}, {c.phase} setting] simulated metric "
            f"{100 * sim:.2f}%"
        )
        return sim

    def run(
        self, p_phase: bool, p_fixed: Any, rounded: bool
    ) -> tuple[str, float | None, Any, float, Candidate]:
        s = self.s
        chosen: tuple[str, Any, int] | None = None
        last: tuple[str, Any, int] | None = None
        first_p = P_ERRORS[1] if p_phase else p_fixed
        order: list[tuple[str, Any, int]] = []
        if rounded:
            order += [
                (_APPROX, first_p, i)
                for i, c in enumerate(self.settings)
                if any(r is not None for r in c.rounding.values())
            ]
        if p_phase or not rounded:
            order.append(("EXACT", first_p, len(self.settings) - 1))
        while order:
            method, p, i = order.pop(0)
            if (method, p, i) in self.measured:  # measured already: no second random draw
                continue
            if s.left() <= max(self.step_s, 0.2 * self.budget):  # a compile must fit
                break
            sim = self.step(method, p, i)
            if sim is None:
                continue
            last = (method, p, i)
            if sim >= s.floor:
                chosen = last
                order = [(method, float(q), i) for q in P_ERRORS if p_phase and q > (p or 0)][-1:]
            elif chosen is None and method == "EXACT" and p_phase:
                order = [(method, float(q), i) for q in P_ERRORS if q < (p or 0)][:1]
        if chosen is None:  # nothing in budget was measured: exact rounding, the fixed p
            chosen = ("EXACT", None if p_phase else p_fixed, len(self.settings) - 1)
        module = self.module(chosen[0], chosen[2], chosen[1])
        sim = self.measured.get(chosen, float("nan"))
        # the chosen step's module kept its circuit; it is compiled again only when nothing
        # was measured in budget, or when the caller's artifacts must end with its compile
        again = last != chosen and s.compile_opts["artifacts"] is not None
        if chosen not in self.measured or again:
            start = time.monotonic()
            s.compile(module, chosen[1])
            if chosen not in self.measured:
                sim = _simulated_metric(s, module)
            self.final_s = time.monotonic() - start
        return chosen[0], chosen[1], module, sim, self.settings[chosen[2]]


def _as_tuple(data: Any) -> tuple[np.ndarray, ...]:
    if isinstance(data, (tuple, list)):
        return tuple(np.asarray(as_numpy(d)) for d in data)
    return (np.asarray(as_numpy(data)),)


def _no_setting(s: _Search) -> None:
    fits = [c for c in s.candidates if np.isfinite(c.complexity)]
    in_budget = [c for c in s.candidates if c.metric >= s.floor]
    best_metric = max((c.metric for c in s.candidates), default=float("nan"))
    narrowest = min((c.max_bits for c in in_budget if c.max_bits), default=None)
    parts = [f"best metric {100 * best_metric:.2f}% against the floor {100 * s.floor:.2f}%"]
    if in_budget and not fits and narrowest is not None:
        parts.append(f"the settings in budget need {narrowest}-bit table lookups (limit 16)")
    if s.left() <= 0:
        parts.append("the time budget ran out")
    raise TuningError(
        "tune: no setting fits 16 bits within the accuracy budget: "
        + "; ".join(parts)
        + "; raise accuracy_budget or time_budget, or give a larger n_bits range",
        best_metric=best_metric,
    )
