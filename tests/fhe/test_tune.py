"""fhequant.tune, n_bits="auto" and the ``fhequant tune`` command (docs/cost.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import fhequant
from fhequant._concrete import fhe_module
from fhequant.errors import ArgumentError, TuningError
from fhequant.fhe.tune import top1_agreement
from ptq_helpers import mlp

X = np.random.default_rng(0).normal(size=(80, 6)).astype(np.float32)


def test_top1_agreement() -> None:
    out = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1_agreement(out, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert top1_agreement(out, out) == 1.0


def test_no_setting_in_budget_is_a_typed_error() -> None:
    # a negative budget asks for better than the float model: nothing can reach it
    with pytest.raises(TuningError, match="best metric") as info:
        fhequant.tune(mlp([6, 8, 3]), X, accuracy_budget=-50, time_budget=30, progress=False)
    assert 0 <= info.value.best_metric <= 1


def test_auto_is_refused_where_nothing_searches() -> None:
    with pytest.raises(ArgumentError, match="int or a dict"):
        fhequant.build_quantized_module(mlp([6, 8, 3]), X, n_bits="auto")


@pytest.mark.slow
def test_tune_respects_the_budgets(tmp_path: Path) -> None:
    fhe_module()  # concrete's first import is no part of the search
    budget = 25.0
    lines: list[str] = []
    start = time.monotonic()
    result = fhequant.tune(mlp([6, 8, 3]), X, time_budget=budget, progress=lines.append)
    elapsed = time.monotonic() - start
    # the search starts no step after the budget; a step started in time (one p_error
    # compile) runs to its end, and the compile of the chosen setting may follow
    spent = elapsed - result.extra["final_compile_s"] - result.extra["step_s"]
    assert spent <= budget * 1.2, "\n".join(lines)
    assert lines and result.candidates
    assert result.metric >= result.reference_metric - 0.01  # simulated, within 1 point
    assert result.cost.fits and result.module.fhe_circuit is not None
    assert result.cost.total_pbs == result.module.fhe_circuit.programmable_bootstrap_count
    front = result.pareto
    assert [c.complexity for c in front] == sorted(c.complexity for c in front)
    assert result.plot(tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(result.to_dict(), default=str)
    # the chosen setting rebuilds the same module
    again = fhequant.build_quantized_module(
        mlp([6, 8, 3]), X, n_bits=result.n_bits,
        rounding_threshold_bits=result.rounding_threshold_bits,
    )  # fmt: skip
    np.testing.assert_array_equal(again.forward(X), result.module.forward(X))


@pytest.mark.slow
def test_tune_command_line(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(mlp([6, 8, 3]), str(model))
    np.save(tmp_path / "x.npy", X)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-m", "fhequant", "tune", str(model), "--calibration",
         str(tmp_path / "x.npy"), "--time-budget", "20", "--quiet", "--output-dir",
         str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "PBS per sample" in out.stdout
    data = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert data["cost"]["total_pbs"] > 0 and (tmp_path / "out" / "pareto.png").exists()
    # no setting: exit status 2 and the reason on stderr
    bad = subprocess.run(
        [sys.executable, "-m", "fhequant", "tune", str(model), "--calibration",
         str(tmp_path / "x.npy"), "--accuracy-budget", "-50", "--quiet"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "best metric" in bad.stderr


@pytest.mark.slow
def test_compile_torch_model_auto_rounding() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = np.random.default_rng(1).normal(size=(400, 6)).astype(np.float32)  # 1 point = 4 rows
    # n_bits 6 alone already costs 1.25 points of agreement here (over the 1-point budget)
    module = fhequant.compile_torch_model(net, x, n_bits=8, rounding_threshold_bits="auto")
    assert module.fhe_circuit is not None
    ops = [op for _, (_, op) in module.quant_layers_dict.items() if op.is_mixing]
    assert all(op.input_quant_opts.n_bits == 8 for op in ops)  # n_bits kept as given
    assert module.cost_report().fits
    # the rounding method is searched with simulation: approximate (free) when in budget
    methods = {
        op.rounding_threshold_bits["method"].name
        for op in ops
        if getattr(op, "rounding_threshold_bits", None)
    }
    assert methods <= {"EXACT", "APPROXIMATE"} and methods
