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
    # each wider lookup costs more; a looser p_error class costs less
    assert model.complexity("tlu", 8, None) > model.complexity("tlu", 4, None)
    assert model.complexity("tlu", 8, 0.05) < model.complexity("tlu", 8, None)
    path = model.save(tmp_path / "m.json")
    monkeypatch.setenv("FHEQUANT_COST_MODEL", str(path))
    assert load_cost_model().to_dict() == data
    with pytest.raises(SerializationError, match="format_version"):
        CostModel.from_dict({**data, "format_version": 999})
