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
from fhequant.fhe.cost_model import FORMAT_VERSION, CostModel, load_cost_model
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
        max_bits=3, p_errors=(1e-2,), timing_bits=(2,), repeats=1, norm_grid=(-1, 0, 16)
    )
    entry = model.classes[1e-2]["tlu"][3]
    assert set(entry["by_norm"]) == {"-1.0", "0.0", "16.0"}
    # the noisier grid point needs parameters at least as large
    assert entry["by_norm"]["16.0"]["complexity"] >= entry["by_norm"]["-1.0"]["complexity"]
    assert model.seconds_per_complexity > 0
    back = CostModel.from_dict(json.loads(model.save(tmp_path / "m.json").read_text()))
    assert back.complexity("tlu", 3, 1e-2, 10.0) == model.complexity("tlu", 3, 1e-2, 10.0)
