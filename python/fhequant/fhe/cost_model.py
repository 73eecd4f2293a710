"""The cost model: what one PBS costs, per kind, input width and error-probability class.

concrete chooses crypto parameters per partition of the circuit from the widths of its table
lookups and the error probability (p_error); a PBS then costs what its parameters cost. The
model stores, measured once with concrete on one machine (:func:`measure_cost_model`,
``fhequant calibrate-cost``), for each p_error class and each lookup input width from 1 to 16
bits: the optimizer's ``complexity`` of one PBS and the key sizes (bootstrap + key-switch
keys) of a circuit at that width; and the latency fit of that machine (:class:`LatencyFit`):
seconds per unit of complexity, seconds per PBS and seconds per run. A prediction sums the
complexity of the module's PBS (:mod:`fhequant.fhe.lookups`) and converts it, with the PBS
count, to seconds.

The packaged model (``cost_model.json``, format version :data:`FORMAT_VERSION`) is used
unless ``FHEQUANT_COST_MODEL`` names another file or ``~/.cache/fhequant/cost_model.json``
(what ``fhequant calibrate-cost`` writes) exists.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fhequant.errors import ConfigurationError, SerializationError
from fhequant.fhe.latency_fit import LatencyFit, fit_latency

__all__ = [
    "FORMAT_VERSION",
    "P_ERROR_CLASSES",
    "CostModel",
    "LatencyFit",
    "fit_latency",
    "load_cost_model",
    "measure_cost_model",
    "time_latency",
    "user_cost_model_path",
]

#: Version of the JSON layout of a cost model (2: table lookups priced by noise norm too;
#: 3: latency = seconds per complexity, per PBS and per run, :class:`LatencyFit`).
FORMAT_VERSION = 3
#: Grid labels L of the table-lookup measurements: the lookups read ``x + 2**(L/2) * h``,
#: noise variance factor 1 + 2**L (:func:`_grid_x`); -1 stands for x alone (factor 1).
NORM_GRID = (-1, 0, 8, 16, 24)
#: The p_error values the model is measured at; a p_error uses the nearest class at or
#: below it (the conservative side).
P_ERROR_CLASSES = (2.0**-40, 1e-5, 1e-3, 1e-2, 5e-2)
_MAX_BITS = 16


def user_cost_model_path() -> Path:
    """Where ``fhequant calibrate-cost`` writes the model of this machine."""
    return Path.home() / ".cache" / "fhequant" / "cost_model.json"


@dataclass
class CostModel:
    """Per-PBS complexity and key sizes by p_error class and width, and the latency fit.

    Attributes:
        latency: the machine's seconds per complexity, per PBS and per run.
        classes: p_error class -> kind ("tlu", "round") -> width -> {"complexity": per PBS,
            "key_bytes": bootstrap + key-switch key bytes of a circuit at that width}; a
            width concrete finds no parameters for is absent.
        meta: where and with what the model was measured.
    """

    latency: LatencyFit
    classes: dict[float, dict[str, dict[int, dict[str, Any]]]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds_per_complexity(self) -> float:
        """Seconds per unit of concrete complexity (the latency fit's)."""
        return self.latency.per_complexity

    def p_error_class(self, p_error: float | None) -> float:
        """The measured class for a p_error (the largest class <= p_error; 2**-40 for None)."""
        keys = sorted(self.classes)
        if p_error is None:
            return keys[0]
        below = [k for k in keys if k <= float(p_error) * (1 + 1e-9)]
        return below[-1] if below else keys[0]

    def entry(self, kind: str, bits: int, p_error: float | None) -> dict[str, float]:
        """The measured entry of one PBS kind and width (the nearest measured width above,
        else the widest; products and max-pool steps are costed as table lookups)."""
        table = self.classes[self.p_error_class(p_error)]
        per_kind = table.get("round" if kind == "round" else "tlu") or table["tlu"]
        widths = sorted(per_kind)
        bits = max(int(bits), 1)
        above = [w for w in widths if w >= bits]
        best = per_kind[above[0] if above else widths[-1]]
        if not above and widths and bits > widths[-1]:  # extrapolate: x2 per bit
            scale = 2.0 ** (bits - widths[-1])
            return {k: v * scale for k, v in best.items() if k != "by_norm"}
        return best

    def complexity(
        self, kind: str, bits: int, p_error: float | None, log_norm: float = 0.0
    ) -> float:
        """concrete complexity of one PBS (``log_norm``: see :meth:`normed`)."""
        return float(self.normed(kind, bits, p_error, log_norm)["complexity"])

    def normed(
        self, kind: str, bits: int, p_error: float | None, log_norm: float
    ) -> dict[str, float]:
        """The entry of a PBS whose input carries noise of variance factor 2**log_norm.

        concrete sizes the crypto parameters of a partition (the lookups of one width) for
        its noisiest input: a lookup fed by a dot product of earlier lookups' outputs with
        large weights needs larger parameters. Table lookups are measured on a grid of
        norms (:data:`NORM_GRID`, in ``by_norm``); between grid points the complexity and
        key size are interpolated geometrically, beyond the last the last is used.
        """
        base = self.entry(kind, bits, p_error)
        if kind == "round":
            return base
        raw = self._raw(kind, bits, p_error)
        scale = base["complexity"] / max(raw["complexity"], 1e-300)
        grid = raw.get("by_norm")
        if not isinstance(grid, dict) or not grid:  # not measured: the nearest curve's ratios
            borrowed = self._nearest_curve(bits, p_error)
            if borrowed is None:
                return base
            fresh = borrowed.get(str(float(-1)), borrowed[min(borrowed, key=float)])
            grid = {
                n: {k: raw[k] * pt[k] / max(fresh[k], 1.0) for k in ("complexity", "key_bytes")}
                for n, pt in borrowed.items()
            }
        points = sorted((_grid_x(float(k)), v) for k, v in grid.items())
        x = float(log_norm)
        lo = [pt for pt in points if pt[0] <= x]
        hi = [pt for pt in points if pt[0] >= x]
        if not lo:
            return {k: v * scale for k, v in points[0][1].items()}
        if not hi:
            return {k: v * scale for k, v in points[-1][1].items()}
        (x0, e0), (x1, e1) = lo[-1], hi[0]
        t = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
        return {
            k: scale * math.exp((1 - t) * math.log(max(e0[k], 1.0)) + t * math.log(max(e1[k], 1.0)))
            for k in ("complexity", "key_bytes")
        }

    def _nearest_curve(self, bits: int, p_error: float | None) -> dict[str, Any] | None:
        """The by-norm curve of the nearest measured width of this class, else of the nearest
        class (for models measured on a partial grid)."""
        cls = self.p_error_class(p_error)
        order = sorted(self.classes, key=lambda c: abs(math.log10(c) - math.log10(cls)))
        for c in order:
            table = self.classes[c].get("tlu", {})
            measured = [w for w, e in table.items() if e.get("by_norm")]
            widths = sorted(measured, key=lambda w: (abs(w - bits), -w))
            if widths:
                return dict(table[widths[0]]["by_norm"])
        return None

    def _raw(self, kind: str, bits: int, p_error: float | None) -> dict[str, Any]:
        table = self.classes[self.p_error_class(p_error)]
        per_kind = table.get("round" if kind == "round" else "tlu") or table["tlu"]
        widths = sorted(per_kind)
        above = [w for w in widths if w >= max(int(bits), 1)]
        return per_kind[above[0] if above else widths[-1]]

    def key_bytes(self, widths: Sequence[int], p_error: float | None) -> float:
        """Estimated evaluation-key bytes of a circuit with lookups of these widths: the keys
        of each distinct width (concrete gives each partition its own keys)."""
        return float(sum(self.entry("tlu", b, p_error)["key_bytes"] for b in set(widths)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (format version :data:`FORMAT_VERSION`)."""
        return {
            "format_version": FORMAT_VERSION,
            "meta": self.meta,
            "latency": self.latency.to_dict(),
            "classes": {
                repr(p): {kind: {str(b): e for b, e in t.items()} for kind, t in kinds.items()}
                for p, kinds in self.classes.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostModel:
        """Read the JSON form.

        Raises:
            SerializationError: not a mapping, another format version (older models priced
                latency by complexity alone), missing fields or a malformed latency fit.
        """
        if not isinstance(data, dict):
            raise SerializationError(
                f"cost model: expected a JSON object, got {type(data).__name__}"
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise SerializationError(
                f"cost model format_version {data.get('format_version')!r} is not "
                f"{FORMAT_VERSION}; re-measure it with `fhequant calibrate-cost`"
            )
        if "latency" not in data:
            raise SerializationError(
                "cost model: no 'latency' fit; re-measure it with `fhequant calibrate-cost`"
            )
        latency = LatencyFit.from_dict(data["latency"])
        try:
            classes = {
                float(p): {
                    kind: {int(b): _entry(e) for b, e in t.items()} for kind, t in kinds.items()
                }
                for p, kinds in data["classes"].items()
            }
            return cls(latency, classes, dict(data.get("meta", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SerializationError(f"cost model: malformed data ({exc})") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON form to ``path`` (parents created)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        return out


def _grid_x(label: float) -> float:
    """log2 of the variance factor a grid point measures: the circuit's lookups read
    ``x + a * h`` with variance factor 1 (x) + a**2 = 1 + 2**label (label -1: x alone)."""
    return 0.0 if label < 0 else math.log2(1.0 + 2.0**label)


def _entry(e: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: float(v) for k, v in e.items() if k != "by_norm"}
    if "by_norm" in e:
        out["by_norm"] = {
            str(float(n)): {k: float(v) for k, v in pt.items()} for n, pt in e["by_norm"].items()
        }
    return out


def load_cost_model(path: str | os.PathLike[str] | None = None) -> CostModel:
    """The cost model: ``path``, else ``$FHEQUANT_COST_MODEL``, else this machine's
    (``fhequant calibrate-cost``), else the packaged one."""
    candidates = [path, os.environ.get("FHEQUANT_COST_MODEL"), user_cost_model_path()]
    for c in candidates:
        if c and Path(c).is_file():
            return CostModel.from_dict(json.loads(Path(c).read_text()))
        if c is path and path is not None:
            raise ConfigurationError(f"cost model file {str(path)!r} does not exist")
    text = resources.files("fhequant.fhe").joinpath("cost_model.json").read_text()
    return CostModel.from_dict(json.loads(text))


# -- measuring ---------------------------------------------------------------------------------


def _compile_lookup(bits: int, p_error: float, lsbs: int, elements: int) -> Any:
    """A circuit of ``elements`` lookups of ``bits``-bit inputs (after rounding ``lsbs``)."""
    from fhequant._concrete import fhe_module

    fhe = fhe_module()
    width = bits + lsbs

    def circuit(x: Any) -> Any:
        y = fhe.round_bit_pattern(x, lsbs) if lsbs else x
        return fhe.univariate(lambda v: (v >> lsbs) % 4)(y)

    hi = 2**width - 1
    inputset = [np.full(elements, v, dtype=np.int64) for v in (0, hi, hi // 2)]
    config = fhe.Configuration(p_error=p_error, single_precision=False)
    return fhe.Compiler(circuit, {"x": "encrypted"}).compile(inputset, configuration=config)


def _compile_normed(bits: int, p_error: float, log_norm: int, elements: int) -> Any:
    """A circuit whose ``bits``-bit lookups read ``x + a * h(x)``, h an (all-zero) lookup of
    x and a = 2**(log_norm / 2): the value keeps x's width, its noise variance factor is
    a**2 = 2**log_norm (the fresh input's noise counts as nothing)."""
    from fhequant._concrete import fhe_module

    fhe = fhe_module()
    a = round(2.0 ** (log_norm / 2))

    def circuit(x: Any) -> Any:
        # two lookups with equal values: their difference is zero (x's width is kept) but is
        # a PBS output concrete cannot fold away (one lookup of a constant table would be)
        h = fhe.univariate(lambda v: v % 3)(x) - fhe.univariate(lambda v: (v + 3) % 3)(x)
        return fhe.univariate(lambda v: v % 4)(x + h * a)

    hi = 2**bits - 1
    inputset = [np.full(elements, v, dtype=np.int64) for v in (0, hi, hi // 2)]
    config = fhe.Configuration(p_error=p_error, single_precision=False)
    return fhe.Compiler(circuit, {"x": "encrypted"}).compile(inputset, configuration=config)


def _measure_norms(
    p: float, bits: int, n: int, grid: Sequence[int], say: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for log_norm in grid:
        if log_norm < 0:
            continue
        try:
            cx, keys, pbs = _stats(_compile_normed(bits, p, log_norm, n))
        except RuntimeError:
            continue
        out[str(float(log_norm))] = {"complexity": cx / max(pbs, 1), "key_bytes": keys}
    say(f"p_error {p:.3g}, {bits} bits by norm: " + ", ".join(
        f"2^{float(k):g}: {v['complexity']:.3g}" for k, v in out.items()
    ))  # fmt: skip
    return out


#: Width the rounding circuits round to (their lookup is cheap: the rounding steps dominate).
_ROUND_TO = 3


def _measure_rounding(
    p: float,
    tlu: dict[int, dict[str, float]],
    max_bits: int,
    n: int,
    say: Callable[[str], None],
) -> dict[int, dict[str, float]]:
    """Per rounding step, by the width before rounding: circuits rounding w-bit values to
    3 bits then looking them up; the cost of the 3-bit lookups is taken off and the rest
    divided among the w - 3 steps of each element."""
    out: dict[int, dict[str, float]] = {}
    base = tlu.get(_ROUND_TO, {}).get("complexity", 0.0)
    for width in range(_ROUND_TO + 1, max_bits + 1):
        try:
            cx, keys, _ = _stats(_compile_lookup(_ROUND_TO, p, width - _ROUND_TO, n))
        except RuntimeError:
            continue
        per = max((cx / n - base) / (width - _ROUND_TO), 0.0)
        out[width] = {"complexity": per, "key_bytes": keys}
        say(f"p_error {p:.3g}, rounding {width} bits: {per:.3g} per step")
    return out


def _stats(circuit: Any) -> tuple[float, float, int]:
    keys = float(circuit.size_of_bootstrap_keys + circuit.size_of_keyswitch_keys)
    return float(circuit.complexity), keys, int(circuit.programmable_bootstrap_count)


#: The timed circuits of :func:`time_latency`: (kind, lookup width, elements). Small widths
#: (cheap parameters, where the per-PBS floor dominates), a wider one (where the complexity
#: does) and layer-shaped ones (:func:`_compile_layer`: a dot product of 64 inputs feeding
#: 32 or 64 exactly rounded lookups, hundreds of PBS, as real circuits have).
TIMING_CIRCUITS: tuple[tuple[str, int, int], ...] = (
    ("tlu", 3, 64),
    ("tlu", 7, 24),
    ("layer", 4, 32),
    ("layer", 5, 64),
)
#: A shorter set for ``calibrate-cost --quick`` (no 7-bit keys, one layer).
QUICK_TIMING_CIRCUITS: tuple[tuple[str, int, int], ...] = (
    ("tlu", 3, 64),
    ("layer", 4, 32),
)


def _compile_layer(bits: int, p_error: float, outputs: int, inputs: int = 64) -> Any:
    """A layer-shaped circuit, as fhequant compiles a Gemm: 4-bit inputs times a 3-bit
    weight matrix (``inputs`` x ``outputs``), the sums rounded exactly to ``bits`` bits
    (PBS per removed bit), looked up (a ReLU), then a second dot product to 10 outputs."""
    from fhequant._concrete import fhe_module

    fhe = fhe_module()
    w1 = (np.arange(inputs * outputs).reshape(inputs, outputs) * 7919) % 7 - 3
    w2 = (np.arange(outputs * 10).reshape(outputs, 10) * 104729) % 7 - 3
    top = int(np.abs(w1).sum(axis=0).max()) * 15
    lsbs = max(int(np.ceil(np.log2(top + 1))) + 1 - bits, 0)

    def circuit(x: Any) -> Any:
        y = fhe.round_bit_pattern(x @ w1, lsbs)
        return fhe.univariate(lambda v: np.maximum(v >> lsbs, 0) % 16)(y) @ w2

    inputset = [np.full(inputs, v, dtype=np.int64) for v in (0, 15, 7)]
    inputset += [(np.arange(inputs) * (k + 3)) % 16 for k in range(8)]
    config = fhe.Configuration(p_error=p_error, single_precision=False)
    return fhe.Compiler(circuit, {"x": "encrypted"}).compile(inputset, configuration=config)


def time_latency(
    circuits: Sequence[tuple[str, int, int]] = TIMING_CIRCUITS,
    repeats: int = 2,
    progress: Callable[[str], None] | None = None,
) -> LatencyFit:
    """Time real executions on this machine, now, and fit the latency model.

    Each circuit (p_error 1e-2) is compiled, keyed and run ``repeats`` times (the fastest
    run counts: the machine may be shared); :func:`fit_latency` fits seconds per run, per
    unit of complexity and per PBS to them. Small circuits alone mislead: a PBS with small
    parameters costs more than its complexity says, so the circuits span widths and sizes.
    """
    say = progress or (lambda _: None)
    points = []
    for kind, bits, n in circuits:
        if kind == "layer":
            circuit = _compile_layer(int(bits), 1e-2, int(n))
            x = np.full(64, 1, dtype=np.int64)
        else:
            circuit = _compile_lookup(int(bits), 1e-2, 0, int(n))
            x = np.full(int(n), 1, dtype=np.int64)
        circuit.keygen()
        best = math.inf
        for _ in range(repeats):
            args = circuit.encrypt(x)
            start = time.perf_counter()
            circuit.run(args)
            best = min(best, time.perf_counter() - start)
        cx, _, pbs = _stats(circuit)
        points.append({"complexity": cx, "pbs": float(pbs), "seconds": best})
        say(f"timed {kind} {bits} bits x {n}: {best:.3f} s for {pbs} PBS, complexity {cx:.3g}")
    fit = fit_latency(points)
    say(
        f"latency fit: {fit.per_complexity:.3g} s/complexity, {fit.per_pbs:.3g} s/PBS, "
        f"{fit.per_run:.3g} s/run"
    )
    return fit


def measure_cost_model(
    max_bits: int = _MAX_BITS,
    p_errors: Sequence[float] = P_ERROR_CLASSES,
    timing: Sequence[tuple[str, int, int]] = TIMING_CIRCUITS,
    repeats: int = 2,
    progress: Callable[[str], None] | None = None,
    norm_grid: Sequence[int] = NORM_GRID,
) -> CostModel:
    """Measure the cost model on this machine with concrete.

    For each p_error class and width, compiles a circuit of table lookups (and one of
    rounding steps before 3-bit lookups, up to ``max_bits`` + 2 bits: accumulators are
    rounded from wider than 16 bits) and reads concrete's complexity and key sizes; then
    generates keys and times real executions of the ``timing`` circuits (p_error 1e-2) to fit
    seconds per run, per unit of complexity and per PBS (:func:`time_latency`).

    Args:
        max_bits: widest lookup input measured.
        p_errors: the p_error classes.
        timing: the timed circuits, (kind "tlu" or "layer", width, elements).
        repeats: timed runs per circuit (the fastest counts: the machine may be shared).
        progress: called with a line of text per step.
        norm_grid: log2 noise variance factors the table lookups are measured at.

    Returns:
        The CostModel (``save`` it, or let ``fhequant calibrate-cost`` do it).
    """
    say = progress or (lambda _: None)
    n = 8
    classes: dict[float, dict[str, dict[int, dict[str, Any]]]] = {}
    for p in p_errors:
        kinds: dict[str, dict[int, dict[str, Any]]] = {"tlu": {}, "round": {}}
        for bits in range(1, max_bits + 1):
            try:
                cx, keys, _ = _stats(_compile_lookup(bits, p, 0, n))
            except RuntimeError:  # NoParametersFound: this width has no entry
                continue
            kinds["tlu"][bits] = {"complexity": cx / n, "key_bytes": keys}
            by_norm = _measure_norms(p, bits, n, norm_grid, say)
            by_norm["-1.0"] = {"complexity": cx / n, "key_bytes": keys}
            kinds["tlu"][bits]["by_norm"] = by_norm
            say(f"p_error {p:.3g}, {bits} bits: {cx / n:.3g} per PBS, {keys / 1e6:.1f} MB keys")
        kinds["round"] = _measure_rounding(p, kinds["tlu"], max_bits + 2, n, say)
        classes[p] = kinds
    latency = time_latency(timing, repeats, say)
    meta = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "concrete_python": _concrete_version(),
    }
    return CostModel(latency, classes, meta)


def _concrete_version() -> str:
    try:
        from importlib.metadata import version

        return version("concrete-python")
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"
