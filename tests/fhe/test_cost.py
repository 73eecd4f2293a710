"""The cost report before compiling (fhequant.fhe.cost, docs/cost.md).

Every compiled module of tests/fhe also checks that the predicted PBS count equals the
circuit's (``cost_checks.assert_pbs_predicted``); here: approximate rounding, clear inputs,
the report's forms and the cost model file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cost_checks import assert_pbs_predicted
from fhequant import build_quantized_module
from fhequant.errors import SerializationError
from fhequant.fhe.cost_model import (
    FORMAT_VERSION,
    CostModel,
    LatencyFit,
    fit_latency,
    load_cost_model,
)
from ptq_helpers import mlp

X = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)


def test_report_forms(tmp_path: Path) -> None:
    module = build_quantized_module(mlp([6, 8, 3]), X, n_bits=5, rounding_threshold_bits=4)
    report = module.cost_report(X)
    assert report.total_pbs == sum(r.pbs for r in report.rows) > 0
    gemm = report.row("g0")
    assert gemm.by_kind["tlu"] == 8  # one table per hidden unit
    assert gemm.by_kind["round"] > 0 and gemm.max_tlu_bits == 4  # rounded to 4 bits
    assert report.fits and report.latency_s > 0 and report.key_bytes > 0
    data = report.to_dict()
    json.dumps(data)
    assert data["total_pbs"] == report.total_pbs and data["ops"][0]["name"] == "g0"
    text = str(report)
    assert "g0" in text and f"total: {report.total_pbs} PBS" in text
    png = report.plot(tmp_path / "cost.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    # without rounding, the lookups take the 10-bit accumulators: far more expensive
    unrounded = build_quantized_module(mlp([6, 8, 3]), X, n_bits=5).cost_report(X)
    assert unrounded.max_tlu_bits > 4 and unrounded.complexity > 3 * report.complexity
    # a looser p_error is cheaper
    assert module.cost_report(X, p_error=0.01).complexity < report.complexity


@pytest.mark.parametrize(
    ("rtb", "bounds"),
    [({"n_bits": 4, "method": "APPROXIMATE"}, "observed"), (5, "worst_case")],
)
def test_pbs_equals_circuit(rtb: object, bounds: str) -> None:
    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a = torch.nn.Linear(6, 5)
            self.b = torch.nn.Linear(6, 5)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.a(x)) + self.b(y)

    y = X[:, ::-1].copy()
    module = build_quantized_module(Two(), (X, y), n_bits=4, rounding_threshold_bits=rtb)
    report = module.cost_report((X, y), accumulator_bounds=bounds)
    module.compile((X, y), accumulator_bounds=bounds, p_error=1e-3)
    assert assert_pbs_predicted(module) == report.total_pbs
    # approximate rounding is free (the next lookup's modulus switch), exact costs PBS
    assert ("round" in report.row("/a/Gemm_output_0").by_kind) == (rtb == 5)


def test_cost_model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_cost_model()
    assert model.meta.get("concrete_python")
    data = model.to_dict()
    assert data["format_version"] == FORMAT_VERSION
    back = CostModel.from_dict(json.loads(json.dumps(data)))
    assert back.complexity("tlu", 6, None) == model.complexity("tlu", 6, None)
    assert back.complexity("tlu", 6, None, 13.0) == model.complexity("tlu", 6, None, 13.0)
    # a noisier lookup input needs larger parameters: never cheaper than a fresh input
    for bits in (3, 6, 9):
        fresh = model.complexity("tlu", bits, 1e-2)
        assert model.complexity("tlu", bits, 1e-2, 20.0) >= fresh
    assert model.complexity("tlu", 6, 1e-2, 20.0) > model.complexity("tlu", 6, 1e-2)
    # each wider lookup costs more; a looser p_error class costs less
    assert model.complexity("tlu", 8, None) > model.complexity("tlu", 4, None)
    assert model.complexity("tlu", 8, 0.05) < model.complexity("tlu", 8, None)
    path = model.save(tmp_path / "m.json")
    monkeypatch.setenv("FHEQUANT_COST_MODEL", str(path))
    assert load_cost_model().to_dict() == data
    with pytest.raises(SerializationError, match="format_version"):
        CostModel.from_dict({**data, "format_version": 999})


def test_lookup_noise_norms() -> None:
    """The noise variance factor of each lookup input: an input or a PBS output counts 1,
    and linear nodes multiply it by their squared weights (the max over outputs)."""
    from fhequant._concrete import fhe_module
    from fhequant.fhe.lookups import count_lookups

    fhe = fhe_module()
    w = np.array([[1, 2], [3, -4], [0, 1]])  # columns: 1+9+0 = 10, 4+16+1 = 21

    def f(x: object) -> object:
        h = fhe.univariate(lambda v: v % 3)(x)  # reads x: fresh, no lookup noise
        z = h @ w  # 21 * 1
        s = np.sum(fhe.univariate(lambda v: v % 2)(z)) * 3  # 2 elements, then 3**2: 18
        return fhe.univariate(lambda v: v % 5)(z), fhe.univariate(lambda v: v % 7)(s + h[0])

    inputset = [np.array([a, b, c]) for a, b, c in ((0, 1, 2), (3, 2, 1), (2, 2, 2))]
    graph = fhe.Compiler(f, {"x": "encrypted"}).trace(inputset)
    norms = sorted(lk.log_norm for lk in count_lookups(graph, 1) if lk.kind == "tlu")
    # x -> h: 0 (an input counts as a PBS output); z -> two lookups: log2 21; s + h[0]: 19
    assert norms == pytest.approx([0.0, np.log2(19), np.log2(21), np.log2(21)])


@pytest.mark.slow
def test_measure_cost_model_small_grid(tmp_path: Path) -> None:
    from fhequant.fhe.cost_model import measure_cost_model

    model = measure_cost_model(
        max_bits=3,
        p_errors=(1e-2,),
        timing=(("tlu", 2, 8), ("tlu", 3, 32), ("layer", 4, 8)),
        repeats=1,
        norm_grid=(-1, 0, 16),
    )
    entry = model.classes[1e-2]["tlu"][3]
    assert set(entry["by_norm"]) == {"-1.0", "0.0", "16.0"}
    # the noisier grid point needs parameters at least as large
    assert entry["by_norm"]["16.0"]["complexity"] >= entry["by_norm"]["-1.0"]["complexity"]
    assert len(model.latency.points) == 3
    assert model.latency.per_complexity > 0 or model.latency.per_pbs > 0
    back = CostModel.from_dict(json.loads(model.save(tmp_path / "m.json").read_text()))
    assert back.complexity("tlu", 3, 1e-2, 10.0) == model.complexity("tlu", 3, 1e-2, 10.0)


def test_cost_model_format_v3_validation() -> None:
    """Version 3 holds a latency fit; older versions and malformed fits are refused with a
    SerializationError that says what to do."""
    data = load_cost_model().to_dict()
    assert data["format_version"] == FORMAT_VERSION == 3
    assert set(data["latency"]) >= {"per_complexity", "per_pbs", "per_run"}
    old = {k: v for k, v in data.items() if k != "latency"}
    with pytest.raises(SerializationError, match="calibrate-cost"):
        CostModel.from_dict({**old, "format_version": 2, "seconds_per_complexity": 1e-9})
    with pytest.raises(SerializationError, match="no 'latency'"):
        CostModel.from_dict(old)
    bad_fits = [
        ([], "mapping"),
        ({**data["latency"], "per_pbs": "fast"}, "latency.per_pbs must be a number"),
        ({**data["latency"], "per_run": -1.0}, "latency.per_run must be finite"),
        ({**data["latency"], "per_complexity": float("nan")}, "per_complexity must be finite"),
        ({**data["latency"], "per_complexity": True}, "per_complexity must be a number"),
        ({**data["latency"], "per_complexity": 0.0, "per_pbs": 0.0}, "both 0"),
        ({**data["latency"], "points": [1, 2]}, "latency.points"),
    ]
    for fit, message in bad_fits:
        with pytest.raises(SerializationError, match=message):
            CostModel.from_dict({**data, "latency": fit})
    with pytest.raises(SerializationError, match="JSON object"):
        CostModel.from_dict([data])  # type: ignore[arg-type]


def test_latency_fit_arithmetic() -> None:
    """seconds = per_run + per_complexity * complexity + per_pbs * PBS; the fit recovers
    coefficients from exact points, never goes negative, and the report uses it."""
    fit = LatencyFit(2e-10, 5e-3, 0.25)
    assert fit.seconds(1e10, 100) == pytest.approx(0.25 + 2.0 + 0.5)
    assert fit.seconds_of_pbs(1e10, 100) == pytest.approx(2.5)
    points = [
        {"complexity": c, "pbs": float(n), "seconds": fit.seconds(c, n)}
        for c, n in ((2e9, 64), (1.2e10, 24), (9e9, 256), (2e10, 512))
    ]
    got = fit_latency(points)
    assert got.per_complexity == pytest.approx(2e-10, rel=1e-6)
    assert got.per_pbs == pytest.approx(5e-3, rel=1e-6)
    assert got.per_run == pytest.approx(0.25, rel=1e-6)
    assert got.points[0]["seconds"] == points[0]["seconds"]
    # time that does not grow with the PBS: the per-PBS term is dropped, not made negative
    flat = [{"complexity": c, "pbs": float(n), "seconds": 1e-10 * c} for c, n in
            ((1e9, 500), (4e9, 20), (8e9, 200))]  # fmt: skip
    got = fit_latency(flat)
    assert min(got.per_complexity, got.per_pbs, got.per_run) >= 0
    assert got.seconds(4e9, 20) == pytest.approx(0.4, rel=0.05)
    with pytest.raises(ValueError, match="seconds > 0"):
        fit_latency([{"complexity": 1.0, "pbs": 1.0, "seconds": 0.0}])
    with pytest.raises(ValueError, match="no timed"):
        fit_latency([])
    # the report: per-op seconds are the PBS terms, the total adds the per-run cost
    model = load_cost_model()
    model = CostModel(LatencyFit(1e-10, 1e-2, 0.5), model.classes, model.meta)
    module = build_quantized_module(mlp([6, 8, 3]), X, n_bits=5, rounding_threshold_bits=4)
    report = module.cost_report(X, cost_model=model)
    for r in report.rows:
        assert r.latency_s == pytest.approx(1e-10 * r.complexity + 1e-2 * r.pbs)
    assert report.latency_s == pytest.approx(
        0.5 + 1e-10 * report.complexity + 1e-2 * report.total_pbs
    )
    assert report.latency_with(fit) == pytest.approx(
        fit.seconds(report.complexity, report.total_pbs)
    )


def test_calibrate_cost_quick_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fhequant calibrate-cost --quick`` measures two p_error classes and times the short
    circuit set; without it, every class and the full set (the measuring itself is slow and
    covered by test_measure_cost_model_small_grid)."""
    import fhequant.fhe.cost_model as cm
    from fhequant.__main__ import main

    seen: list[dict[str, object]] = []

    def fake_measure(**kwargs: object) -> CostModel:
        seen.append(kwargs)
        return load_cost_model()

    monkeypatch.setattr(cm, "measure_cost_model", fake_measure)
    out = tmp_path / "m.json"
    assert main(["calibrate-cost", "--quick", "--output", str(out)]) == 0
    assert seen[-1]["p_errors"] == (2.0**-40, 1e-2)
    assert seen[-1]["timing"] == cm.QUICK_TIMING_CIRCUITS
    assert CostModel.from_dict(json.loads(out.read_text())).latency == load_cost_model().latency
    assert main(["calibrate-cost", "--output", str(out)]) == 0
    assert seen[-1]["p_errors"] == cm.P_ERROR_CLASSES and seen[-1]["timing"] == cm.TIMING_CIRCUITS
