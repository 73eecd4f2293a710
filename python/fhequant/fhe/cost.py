"""Know the FHE cost before paying it: ``QuantizedModule.cost_report(inputs)``.

:func:`cost_report` traces the module with concrete exactly as ``compile`` would (the same
hints, the inputset as one batch: no MLIR, no crypto parameters, no keys), counts the PBS of
every op with :func:`fhequant.fhe.lookups.count_lookups` (equal to the compiled circuit's
``programmable_bootstrap_count``) and prices them with the :mod:`cost model
<fhequant.fhe.cost_model>`: an estimate of concrete's ``complexity``, of the execution
latency of one sample on the machine the model was measured on, and of the evaluation-key
size. The :class:`CostReport` prints as a table, converts with ``to_dict()`` and plots the
per-op PBS and latency as a bar chart (``plot``, matplotlib: the ``plot`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhequant._concrete import fhe_module
from fhequant.errors import MissingDependencyError
from fhequant.fhe.bitwidth import MAX_TLU_BIT_WIDTH, BitWidthReport, hinting_executor
from fhequant.fhe.compile import _batch_graph, _proxy, argument_names, split_samples
from fhequant.fhe.cost_model import CostModel, LatencyFit, load_cost_model
from fhequant.fhe.lookups import KINDS, Lookup, count_lookups
from fhequant.quantized.exec import use_executor

__all__ = ["CostReport", "OpCost", "cost_report", "trace_lookups"]


@dataclass
class OpCost:
    """The PBS of one op.

    Attributes:
        name: op name (its output tensor).
        op_type: op class name.
        pbs: PBS per sample.
        by_kind: kind -> PBS ("tlu", "round", "product", "maxpool").
        widths: input width -> PBS (for rounding steps: the width before rounding).
        lookup_bits: the widest table-lookup input (rounding steps excluded: they take the
            wide accumulator by design), the width concrete's 16-bit limit applies to.
        complexity: estimated concrete complexity of these PBS.
        latency_s: estimated seconds of execution for one sample.
    """

    name: str
    op_type: str
    pbs: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    widths: dict[int, int] = field(default_factory=dict)
    lookup_bits: int = 0
    complexity: float = 0.0
    latency_s: float = 0.0

    @property
    def max_tlu_bits(self) -> int:
        """Widest table-lookup input of the op (0 if none)."""
        return self.lookup_bits


@dataclass
class CostReport:
    """Per-op PBS, widths and estimates of one module (docs/cost.md).

    Attributes:
        rows: one OpCost per op with PBS, in execution order.
        p_error: the p_error the estimates are for (None: the default 2**-40).
        cost_model: the model that priced them.
        bitwidth: the module's BitWidthReport over the same inputset.
        partitions: lookup width -> log2 noise variance factor of the noisiest lookup input of
            that width: concrete chooses one parameter set per width, sized for it.
        round_widths: the widths exact rounding steps read (their own keys).
    """

    rows: list[OpCost]
    p_error: float | None
    cost_model: CostModel
    bitwidth: BitWidthReport
    partitions: dict[int, float] = field(default_factory=dict)
    round_widths: list[int] = field(default_factory=list)

    @property
    def total_pbs(self) -> int:
        """PBS per sample: ``circuit.programmable_bootstrap_count`` after compiling."""
        return sum(r.pbs for r in self.rows)

    @property
    def pbs_by_bits(self) -> dict[int, int]:
        """Input width -> PBS, over the whole module."""
        out: dict[int, int] = {}
        for r in self.rows:
            for b, n in r.widths.items():
                out[b] = out.get(b, 0) + n
        return dict(sorted(out.items()))

    @property
    def max_tlu_bits(self) -> int:
        """Widest table-lookup input of the module (rounding steps excluded)."""
        return max((r.lookup_bits for r in self.rows), default=0)

    @property
    def fits(self) -> bool:
        """Whether every table-lookup input fits concrete's 16 bits."""
        return self.max_tlu_bits <= MAX_TLU_BIT_WIDTH

    @property
    def complexity(self) -> float:
        """Estimated ``circuit.complexity``."""
        return sum(r.complexity for r in self.rows)

    @property
    def latency_s(self) -> float:
        """Estimated execution seconds of one encrypted sample (the ops' PBS and the
        per-run cost of the cost model's latency fit)."""
        return self.cost_model.latency.per_run + sum(r.latency_s for r in self.rows)

    def latency_with(self, fit: LatencyFit) -> float:
        """The estimated seconds of one sample with another latency fit (e.g. one timed
        now, in the same run as a measurement)."""
        return fit.seconds(self.complexity, self.total_pbs)

    @property
    def key_bytes(self) -> float:
        """Estimated bytes of the evaluation keys (bootstrap and key-switch keys)."""
        if not self.partitions:
            widths = {b for r in self.rows for b in r.widths if b <= r.lookup_bits}
            return self.cost_model.key_bytes(sorted(widths), self.p_error)
        lookups = sum(
            self.cost_model.normed("tlu", b, self.p_error, n)["key_bytes"]
            for b, n in self.partitions.items()
        )
        # the rounding steps' keys: those of the widest rounding measured (a circuit of them)
        entry = self.cost_model.entry
        rounding = max(
            (entry("round", w, self.p_error)["key_bytes"] for w in self.round_widths), default=0.0
        )
        return float(lookups + rounding)

    def row(self, name: str) -> OpCost:
        """The row of one op (KeyError naming the ops with PBS if none)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no op {name!r} with PBS; ops: {[r.name for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return {
            "total_pbs": self.total_pbs,
            "pbs_by_bits": {str(b): n for b, n in self.pbs_by_bits.items()},
            "max_tlu_bits": self.max_tlu_bits,
            "complexity": self.complexity,
            "latency_s": self.latency_s,
            "key_bytes": self.key_bytes,
            "p_error": self.p_error,
            "partitions": {str(b): n for b, n in sorted(self.partitions.items())},
            "cost_model": dict(self.cost_model.meta),
            "ops": [
                {
                    "name": r.name,
                    "op_type": r.op_type,
                    "pbs": r.pbs,
                    "by_kind": dict(r.by_kind),
                    "widths": {str(b): n for b, n in sorted(r.widths.items())},
                    "lookup_bits": r.lookup_bits,
                    "complexity": r.complexity,
                    "latency_s": r.latency_s,
                }
                for r in self.rows
            ],
        }

    def __str__(self) -> str:
        head = ("op", "type", "PBS", "TLU/round/product/max", "widths (bits: PBS)", "est. s")
        lines = [head]
        for r in self.rows:
            kinds = "/".join(str(r.by_kind.get(k, 0)) for k in KINDS)
            widths = ", ".join(f"{b}: {n}" for b, n in sorted(r.widths.items()))
            lines.append((r.name, r.op_type, str(r.pbs), kinds, widths, f"{r.latency_s:.3g}"))
        w = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(n) for c, n in zip(line, w, strict=True)) for line in lines]
        out.insert(1, "  ".join("-" * n for n in w))
        p = "2**-40 (default)" if self.p_error is None else f"{self.p_error:g}"
        out.append(
            f"total: {self.total_pbs} PBS per sample, widest input {self.max_tlu_bits} bits; "
            f"estimated {self.latency_s:.3g} s per sample, complexity {self.complexity:.3g}, "
            f"keys {self.key_bytes / 1e6:.0f} MB (p_error {p}; cost model measured "
            f"{self.cost_model.meta.get('measured', '?')})"
        )
        return "\n".join(out)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Bar chart of the PBS and estimated latency per op, written as a PNG.

        Raises:
            MissingDependencyError: matplotlib is not installed (``pip install fhequant[plot]``).
        """
        plt = _pyplot()
        names = [r.name for r in self.rows]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.5 * len(names) + 3), 7))
        ax1.bar(names, [r.pbs for r in self.rows], color="tab:blue")
        ax1.set_ylabel("PBS per sample")
        ax1.set_title(f"{self.total_pbs} PBS, widest {self.max_tlu_bits} bits")
        ax2.bar(names, [r.latency_s for r in self.rows], color="tab:orange")
        ax2.set_ylabel("estimated seconds")
        for ax in (ax1, ax2):
            ax.tick_params(axis="x", labelrotation=60, labelsize=7)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError(
            "plotting needs matplotlib: pip install fhequant[plot]"
        ) from exc
    return plt


def trace_lookups(
    module: Any,
    q: Sequence[Any],
    report: BitWidthReport,
    inputs_encryption_status: Sequence[str] | None = None,
) -> list[Lookup]:
    """Trace the module as ``compile`` does (hints included) and count its PBS.

    Args:
        module: the QuantizedModule.
        q: its quantized inputset (``compile_inputset``), one array per input.
        report: its BitWidthReport over ``q`` (the worst-case hints when it has them).
        inputs_encryption_status: as for compile.

    Returns:
        The Lookups of the circuit, per sample.
    """
    from fhequant.fhe.compile import encryption_statuses
    from fhequant.fhe.module import _forward

    names = argument_names(module.ordered_module_input_names)
    statuses = encryption_statuses(names, inputs_encryption_status)
    hints = report.records if report.worst_case else ()
    proxy = _proxy(_forward(module), names, lambda: use_executor(hinting_executor(hints)))
    graph = _batch_graph(proxy, statuses, q)
    rows = int(q[0].shape[0])
    if graph is None:  # no leading row axis: trace sample by sample, as compile does
        graph = fhe_module().Compiler(proxy, statuses).trace(split_samples(q))
        rows = 1
    return count_lookups(graph, rows)


def cost_report(
    module: Any,
    inputs: Any = None,
    p_error: float | None = None,
    accumulator_bounds: str | None = None,
    cost_model: CostModel | str | os.PathLike[str] | None = None,
    inputs_encryption_status: Sequence[str] | None = None,
    global_p_error: float | None = None,
) -> CostReport:
    """The PBS of every op and the latency and key-size estimates, before compiling.

    Args:
        module: the QuantizedModule.
        inputs: float calibration data (as for compile), or None for the last compile's
            inputset.
        p_error: the p_error the module will be compiled with (None: 2**-40).
        accumulator_bounds: "observed" or "worst_case" (None: the compile's, else observed).
        cost_model: a CostModel, a path to one, or None (:func:`load_cost_model`).
        inputs_encryption_status: as for compile.
        global_p_error: the circuit's error probability, when compiled with it instead of
            p_error (priced as p_error = global_p_error / number of PBS).

    Returns:
        The CostReport.
    """
    from fhequant.fhe.module import module_bitwidth_report

    model = cost_model if isinstance(cost_model, CostModel) else load_cost_model(cost_model)
    report = module_bitwidth_report(module, inputs, accumulator_bounds)
    q = _inputset(module, inputs, report)
    if inputs is None and inputs_encryption_status is None:
        inputs_encryption_status = getattr(module, "_fhe_inputs_encryption_status", None)
    lookups = trace_lookups(module, q, report, inputs_encryption_status)
    types = {name: type(op).__name__ for name, (_, op) in module.quant_layers_dict.items()}
    if global_p_error is not None and p_error is None:  # spread over the circuit's PBS
        p_error = float(global_p_error) / max(sum(lk.count for lk in lookups), 1)
    # concrete picks one parameter set per lookup width (partition), sized for the noisiest
    # input of that width: every PBS of the partition pays for it
    partitions: dict[int, float] = {}
    for lk in lookups:
        if lk.kind != "round":
            partitions[lk.bits] = max(partitions.get(lk.bits, -1.0), lk.log_norm)
    rows: dict[str, OpCost] = {}
    for lk in lookups:
        row = rows.setdefault(lk.op, OpCost(lk.op, types.get(lk.op, "-")))
        row.pbs += lk.count
        row.by_kind[lk.kind] = row.by_kind.get(lk.kind, 0) + lk.count
        row.widths[lk.bits] = row.widths.get(lk.bits, 0) + lk.count
        if lk.kind != "round":
            row.lookup_bits = max(row.lookup_bits, lk.bits)
        norm = partitions.get(lk.bits, lk.log_norm) if lk.kind != "round" else lk.log_norm
        cx = model.complexity(lk.kind, lk.bits, p_error, norm) * lk.count
        row.complexity += cx
        row.latency_s += model.latency.seconds_of_pbs(cx, lk.count)
    order = {name: i for i, name in enumerate(types)}
    ordered = sorted(rows.values(), key=lambda r: order.get(r.name, -1))
    rounds = sorted({lk.bits for lk in lookups if lk.kind == "round"})
    return CostReport(ordered, p_error, model, report, partitions, rounds)


def _inputset(module: Any, inputs: Any, report: BitWidthReport) -> tuple[Any, ...]:
    from fhequant.fhe.module import _input_ranges, _with_extremes, compile_inputset

    if inputs is None:
        return tuple(module._fhe_inputset)
    q = compile_inputset(module, inputs)
    return _with_extremes(q, _input_ranges(module)) if report.worst_case else q
