"""The results of :func:`fhequant.fhe.tune.tune`: evaluated settings and the trade-off table."""

from __future__ import annotations

from collections.abc import Callable  # noqa: F401
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fhequant.fhe.cost import CostReport, _pyplot

__all__ = ["Candidate", "TuneResult", "top1_agreement"]


def top1_agreement(outputs: np.ndarray, target: np.ndarray) -> float:
    """Fraction of rows whose arg-max output equals the target (labels or arg-max indices).

    Args:
        outputs: (rows, classes) scores.
        target: labels (rows,) or reference scores (rows, classes).

    Returns:
        The agreement in [0, 1].
    """
    pred = np.asarray(outputs).reshape(len(outputs), -1).argmax(axis=1)
    ref = np.asarray(target)
    if ref.ndim > 1:
        ref = ref.reshape(len(ref), -1).argmax(axis=1)
    return float(np.mean(pred == ref.astype(np.int64)))


@dataclass
class Candidate:
    """One evaluated setting.

    Attributes:
        n_bits: op name -> n_bits (the mixing ops; the others use ``default``).
        rounding: op name -> rounding threshold (None: not rounded).
        p_error: the p_error (None: 2**-40).
        metric: the metric on the validation data, clear path (simulated for p_error).
        complexity: estimated concrete complexity (inf when it does not fit 16 bits).
        latency_s: estimated seconds per sample.
        max_bits: widest table-lookup input.
        phase: "uniform", "per-op" or "p_error".
        simulated: whether ``metric`` was measured with fhe="simulate".
    """

    n_bits: dict[str, int]
    rounding: dict[str, int | None]
    p_error: float | None
    metric: float
    complexity: float
    latency_s: float
    max_bits: int
    phase: str
    simulated: bool = False

    def settings(self, default_bits: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The per-op n_bits and rounding_threshold_bits mappings of this setting."""
        return (
            {"default": default_bits, **self.n_bits},
            {"default": None, **self.rounding},
        )


@dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes:
        module: the chosen QuantizedModule, compiled with ``p_error``.
        n_bits: its per-op n_bits mapping (give it to build_quantized_module / compile_*).
        rounding_threshold_bits: its per-op rounding mapping.
        p_error: its p_error (None: 2**-40).
        metric: its simulated metric on the validation data (fraction in [0, 1]).
        reference_metric: the float model's metric.
        candidates: every evaluated setting.
        cost: the chosen module's CostReport.
        elapsed_s: the search time.
        extra: "floor" (the metric floor), "final_compile_s" (the compile and simulation of
            the chosen setting after the search, when its p_error was not compiled yet) and
            "step_s" (the longest p_error step: a step started in time runs to its end).
    """

    module: Any
    n_bits: dict[str, Any]
    rounding_threshold_bits: dict[str, Any]
    p_error: float | None
    metric: float
    reference_metric: float
    candidates: list[Candidate]
    cost: CostReport
    elapsed_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pareto(self) -> list[Candidate]:
        """The settings no other beats on both estimated cost and metric, cheapest first."""
        ok = sorted(
            (c for c in self.candidates if np.isfinite(c.complexity)),
            key=lambda c: (c.complexity, -c.metric),
        )
        front: list[Candidate] = []
        for c in ok:
            if not front or c.metric > front[-1].metric:
                front.append(c)
        return front

    def table(self) -> str:
        """The Pareto front as a text table."""
        lines = ["est. complexity  est. s/sample  metric  sim  p_error   n_bits / rounding"]
        for c in self.pareto:
            bits = ", ".join(f"{k}:{v}/{c.rounding.get(k)}" for k, v in c.n_bits.items())
            lines.append(
                f"{c.complexity:15.3g}  {c.latency_s:13.3g}  {100 * c.metric:6.2f}  "
                f"{'yes' if c.simulated else 'no ':3}  {c.p_error or 2**-40:<8.2g}  {bits}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (settings, metric, cost, Pareto front)."""
        return {
            "n_bits": self.n_bits,
            "rounding_threshold_bits": self.rounding_threshold_bits,
            "p_error": self.p_error,
            "metric": self.metric,
            "reference_metric": self.reference_metric,
            "elapsed_s": self.elapsed_s,
            "cost": self.cost.to_dict(),
            "pareto": [c.__dict__ for c in self.pareto],
            "evaluated": len(self.candidates),
        }

    def plot(self, path: Any) -> Any:
        """Estimated cost against metric for every setting, the Pareto front joined (PNG)."""
        from pathlib import Path

        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        ok = [c for c in self.candidates if np.isfinite(c.complexity)]
        ax.scatter([c.complexity for c in ok], [100 * c.metric for c in ok], s=12, c="0.6")
        front = self.pareto
        ax.plot([c.complexity for c in front], [100 * c.metric for c in front], "o-", c="tab:blue")
        ax.scatter([self.cost.complexity], [100 * self.metric], marker="*", s=150, c="tab:red")
        ax.set_xscale("log")
        ax.set_xlabel("estimated complexity")
        ax.set_ylabel("metric (%)")
        ax.axhline(100 * self.extra.get("floor", 0.0), ls="--", c="0.4", lw=0.8)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out
