"""The latency part of the cost model: seconds of one encrypted run on one machine.

``seconds = per_run + per_complexity * complexity + per_pbs * PBS``, fitted by
:func:`fit_latency` to circuits timed by :func:`fhequant.fhe.cost_model.time_latency`
(``fhequant calibrate-cost``), stored in the cost model's ``latency`` field (format 3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fhequant.errors import SerializationError

__all__ = ["LatencyFit", "fit_latency"]


@dataclass(frozen=True)
class LatencyFit:
    """Execution seconds of one circuit run on one machine:
    ``per_run + per_complexity * complexity + per_pbs * PBS``.

    concrete's complexity prices a PBS by its crypto parameters; on a CPU, a PBS with small
    parameters costs far more than its complexity says (a floor per PBS: key switch,
    memory traffic, per-call work), so the seconds are fitted to both, plus a fixed cost per
    run, by least squares over timed circuits (:func:`fit_latency`).

    Attributes:
        per_complexity: seconds per unit of concrete complexity.
        per_pbs: seconds per PBS on top of its complexity.
        per_run: seconds per circuit run (encrypted arguments in, result out).
        points: the timed circuits, each ``{"complexity", "pbs", "seconds"}``.
    """

    per_complexity: float
    per_pbs: float = 0.0
    per_run: float = 0.0
    points: tuple[dict[str, float], ...] = ()

    def seconds(self, complexity: float, pbs: int | float) -> float:
        """Predicted seconds of one run of a circuit (per-run cost included)."""
        return self.per_run + self.seconds_of_pbs(complexity, pbs)

    def seconds_of_pbs(self, complexity: float, pbs: int | float) -> float:
        """Seconds of PBS with this total complexity (no per-run cost: for per-op shares)."""
        return self.per_complexity * float(complexity) + self.per_pbs * float(pbs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_complexity": self.per_complexity,
            "per_pbs": self.per_pbs,
            "per_run": self.per_run,
            "points": [dict(p) for p in self.points],
        }

    @classmethod
    def from_dict(cls, data: Any) -> LatencyFit:
        """Read the JSON form.

        Raises:
            SerializationError: not a mapping, a coefficient missing, not a number, negative
                or not finite, or per_complexity and per_pbs both zero.
        """
        if not isinstance(data, dict):
            raise SerializationError(
                f"cost model: 'latency' must be a mapping, got {type(data).__name__}; "
                "re-measure it with `fhequant calibrate-cost`"
            )
        values: dict[str, float] = {}
        for key in ("per_complexity", "per_pbs", "per_run"):
            v = data.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SerializationError(
                    f"cost model: latency.{key} must be a number, got {v!r}; re-measure it "
                    "with `fhequant calibrate-cost`"
                )
            if not math.isfinite(v) or v < 0:
                raise SerializationError(
                    f"cost model: latency.{key} must be finite and >= 0, got {v!r}"
                )
            values[key] = float(v)
        if values["per_complexity"] == 0 and values["per_pbs"] == 0:
            raise SerializationError(
                "cost model: latency.per_complexity and latency.per_pbs are both 0 (every "
                "circuit would be priced alike); re-measure it with `fhequant calibrate-cost`"
            )
        points = data.get("points", [])
        if not isinstance(points, list):
            raise SerializationError("cost model: latency.points must be a list")
        try:
            pts = tuple({k: float(v) for k, v in pt.items()} for pt in points)
        except (AttributeError, TypeError, ValueError) as exc:
            raise SerializationError(f"cost model: malformed latency.points ({exc})") from exc
        return cls(values["per_complexity"], values["per_pbs"], values["per_run"], pts)


def fit_latency(points: Sequence[dict[str, float]]) -> LatencyFit:
    """Least-squares fit of ``seconds = per_run + per_complexity * complexity + per_pbs *
    pbs`` to timed circuits, with every coefficient >= 0 (a negative one is dropped and the
    rest re-fitted; relative errors are minimised, so short and long runs count alike).

    Raises:
        ValueError: fewer than one point, or a point without seconds > 0.
    """
    if not points:
        raise ValueError("fit_latency: no timed circuits")
    if any(float(p.get("seconds", 0.0)) <= 0 for p in points):
        raise ValueError(f"fit_latency: every point needs seconds > 0, got {list(points)}")
    t = np.array([float(p["seconds"]) for p in points])
    cols = {
        "per_complexity": np.array([float(p["complexity"]) for p in points]),
        "per_pbs": np.array([float(p["pbs"]) for p in points]),
        "per_run": np.ones(len(points)),
    }
    active = [k for k in cols if k != "per_run" or len(points) >= 3]
    while True:
        a = np.stack([cols[k] / t for k in active], axis=1)  # relative residuals
        coef, *_ = np.linalg.lstsq(a, np.ones(len(points)), rcond=None)
        neg = [k for k, c in zip(active, coef, strict=True) if c < 0]
        if not neg or len(active) == 1:
            break
        active = [k for k in active if k != neg[0]]
    values = {k: max(float(c), 0.0) for k, c in zip(active, coef, strict=True)}
    if values.get("per_complexity", 0.0) == 0 and values.get("per_pbs", 0.0) == 0:
        cx = cols["per_complexity"]
        values = {"per_complexity": float(np.median(t / np.maximum(cx, 1.0)))}
    return LatencyFit(
        values.get("per_complexity", 0.0),
        values.get("per_pbs", 0.0),
        values.get("per_run", 0.0),
        tuple({k: float(v) for k, v in p.items()} for p in points),
    )
