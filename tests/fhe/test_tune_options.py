"""The front doors' "auto" path keeps every option (calibration, configuration, artifacts,
global_p_error, inputs_encryption_status, reduce_sum_copy, show_mlir, verbose): each one
reaches ``fhequant.tune`` and, through it, the search's builds and compiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fhequant
import fhequant.fhe.tune as tune_module
from fhequant._concrete import fhe_module
from fhequant.errors import ConfigurationError
from fhequant.quantized.module import QuantizedModule
from ptq_helpers import mlp

X = np.random.default_rng(0).normal(size=(80, 6)).astype(np.float32)

#: option -> a value that differs from the front door's default.
OPTIONS: dict[str, Any] = {
    "calibration": {"method": "percentile", "percentile": 99.0},
    "configuration": "a-configuration",
    "artifacts": "some-artifacts",
    "global_p_error": 1e-3,
    "inputs_encryption_status": ("encrypted",),
    "reduce_sum_copy": True,
    "show_mlir": True,
    "verbose": True,
}


class _Recorder:
    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}

    def __call__(self, model: Any, data: Any, **kwargs: Any) -> Any:
        self.kwargs = kwargs

        class _Result:
            module = "the-module"

        return _Result()


def _torch_net() -> Any:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("front", ["torch", "onnx"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_auto_passes_every_option_to_tune(
    monkeypatch: pytest.MonkeyPatch, option: str, front: str
) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(tune_module, "tune", recorder)
    value = OPTIONS[option]
    p_error = None if option == "global_p_error" else "auto"
    kwargs = {"n_bits": "auto", "p_error": p_error, option: value}
    if front == "torch":
        out = fhequant.compile_torch_model(_torch_net(), X, **kwargs)
    else:
        out = fhequant.compile_onnx_model(mlp([6, 8, 3]), X, **kwargs)
    assert out == "the-module"
    assert recorder.kwargs[option] == value, f"{option} was not passed to tune"


def test_auto_with_import_qat_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="import_qat"):
        fhequant.compile_onnx_model(mlp([6, 8, 3]), X, import_qat=True, n_bits="auto")


def test_global_p_error_with_auto_p_error_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="global_p_error"):
        fhequant.compile_onnx_model(
            mlp([6, 8, 3]), X, n_bits="auto", p_error="auto", global_p_error=1e-3
        )
    with pytest.raises(ConfigurationError, match="global_p_error"):
        fhequant.tune(mlp([6, 8, 3]), X, global_p_error=1e-3, progress=False)


@pytest.mark.slow
def test_tune_builds_and_compiles_with_the_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fhe = fhe_module()
    builds: list[dict[str, Any]] = []
    compiles: list[dict[str, Any]] = []
    real_build = tune_module.build_quantized_module
    real_compile = QuantizedModule.compile

    def spy_build(*args: Any, **kwargs: Any) -> Any:
        builds.append(kwargs)
        return real_build(*args, **kwargs)

    def spy_compile(self: Any, *args: Any, **kwargs: Any) -> Any:
        compiles.append(kwargs)
        return real_compile(self, *args, **kwargs)

    monkeypatch.setattr(tune_module, "build_quantized_module", spy_build)
    monkeypatch.setattr(QuantizedModule, "compile", spy_compile)
    calibration = {"method": "percentile", "percentile": 99.0}
    configuration = fhe.Configuration(dataflow_parallelize=False)
    artifacts = fhe.DebugArtifacts(str(tmp_path / "art"))
    module = fhequant.compile_torch_model(
        _torch_net(), X, n_bits="auto", p_error=None, global_p_error=1e-3,
        calibration=calibration, reduce_sum_copy=True, configuration=configuration,
        artifacts=artifacts, show_mlir=True, inputs_encryption_status=("encrypted",),
    )  # fmt: skip
    assert builds and compiles
    assert all(b["calibration"] == calibration for b in builds)
    assert all(b["reduce_sum_copy"] is True for b in builds)
    for c in compiles:
        assert c["configuration"] is configuration and c["artifacts"] is artifacts
        assert c["global_p_error"] == 1e-3 and c["p_error"] is None
        assert c["show_mlir"] is True
        assert tuple(c["inputs_encryption_status"]) == ("encrypted",)
    circuit = module.fhe_circuit
    assert circuit is not None
    assert circuit.configuration.global_p_error == pytest.approx(1e-3)
    assert artifacts.mlir_to_compile is not None  # the chosen module's compile wrote them
    assert "func.func" in capsys.readouterr().out  # show_mlir printed the MLIR
    # the module is the percentile-calibrated one: its ranges differ from min/max's
    minmax = fhequant.build_quantized_module(
        _torch_net(), X, n_bits=module_n_bits(module), reduce_sum_copy=True
    )
    assert not np.array_equal(minmax.forward(X), module.forward(X))


def module_n_bits(module: Any) -> dict[str, Any]:
    """The per-op n_bits of a module's mixing ops (their op_inputs width)."""
    out: dict[str, Any] = {"default": 8}
    for name, (_, op) in module.quant_layers_dict.items():
        if op.is_mixing:
            out[name] = op.input_quant_opts.n_bits
    return out


@pytest.mark.slow
def test_the_final_confirmation_is_the_measured_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    # p_error 1e-2 simulates in budget, 5e-2 out of it; the chosen 1e-2 is compiled again.
    # A new random simulation of that compile could land under the floor: the result keeps
    # the metric the choice was made on (same deterministic circuit)
    calls: list[int] = []

    def fake_simulation(s: Any, module: Any) -> float:
        calls.append(1)
        return 1.0 if len(calls) == 1 else 0.5

    monkeypatch.setattr(tune_module, "_simulated_metric", fake_simulation)
    result = fhequant.tune(mlp([6, 8, 3]), X, time_budget=60, progress=False)
    simulated = [c.p_error for c in result.candidates if c.simulated]
    assert simulated == [1e-2, 5e-2]
    assert result.p_error == 1e-2
    assert result.metric == 1.0 >= result.extra["floor"]
    assert len(calls) == 2  # no third, random, simulation
    assert result.module.fhe_circuit.configuration.p_error == pytest.approx(1e-2)
