"""Compiling quantized models with concrete-python: simulate, execute, bit widths
(docs/contract.md §6.2, §7).

Every compiled model checks that the BitWidthReport predicts
``circuit.graph.maximum_integer_bit_width()`` exactly. Real encryption runs once here, on a
tiny model with a loose p_error (fast keys); longer executions are marked slow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cost_checks import assert_pbs_predicted
from fhe_standin import make_standin
from fhequant import build_quantized_module, compile_onnx_model, compile_torch_model
from fhequant.errors import OpsetError
from fhequant.fhe import analyse, build_configuration, compile_forward, simulate
from fhequant.fhe.bitwidth import HintingExecutor, op_scope
from fhequant.torch import export_to_onnx


def _predicted_equals_circuit(module: Any) -> int:
    report = module.bitwidth_report()
    got = module.fhe_circuit.graph.maximum_integer_bit_width()
    assert report.predicted_max_bit_width == got, str(report)
    assert_pbs_predicted(module)
    return int(got)


# --- the stand-in integer MLP (no PTQ stack) -----------------------------------------------


@pytest.mark.parametrize("threshold", [None, 5])
@pytest.mark.parametrize("bounds", ["observed", "worst_case"])
def test_standin_mlp_compile_simulate(threshold: int | None, bounds: str) -> None:
    model, x = make_standin([10, 8, 3], n_bits=4, threshold=threshold)
    q = model.quantize_input(x)
    ops = model.ops()
    qs = q
    if bounds == "worst_case":
        lo, hi = model.input_range()
        qs = np.concatenate([q, np.full((1, 10), lo), np.full((1, 10), hi)])
    report = analyse(model.quantized_forward, ops, [qs], [model.input_range()], bounds)
    config = build_configuration(has_rounding=threshold is not None)
    hints = report.records if bounds == "worst_case" else ()
    with op_scope(ops, HintingExecutor(hints)):
        circuit = compile_forward(model.quantized_forward, ["x.0"], [qs], config)
    assert circuit.graph.maximum_integer_bit_width() == report.predicted_max_bit_width
    assert report.worst_case_max_bit_width >= report.observed_max_bit_width
    (sim,) = simulate(circuit, q, progress=False)
    np.testing.assert_array_equal(sim, model.quantized_forward(q))
    if bounds == "worst_case":
        rand = np.random.default_rng(1).integers(0, 16, size=(25, 10))
        (sim,) = simulate(circuit, rand, progress=False)
        np.testing.assert_array_equal(sim, model.quantized_forward(rand))


def test_standin_argument_name_in_circuit() -> None:
    model, x = make_standin([5, 3], n_bits=3)
    q = model.quantize_input(x)
    circuit = compile_forward(model.quantized_forward, ["x.0"], [q], build_configuration())
    assert "_x_0" in circuit.graph.format()


# --- real QuantizedModules ------------------------------------------------------------------


def _mlp(asymmetric: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.Sigmoid()
    )
    net.append(torch.nn.Linear(16, 3))
    if asymmetric:  # all-positive weights: z_w != 0, the Σx correction is traced
        with torch.no_grad():
            net[2].weight.abs_()
    return net


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(3, 2, 3, stride=2),
    )
    with torch.no_grad():
        net[2].weight.abs_()
    return net


def _cnn_maxpool() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(27, 3),
    )


def _cnn_avgpool() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.AvgPool2d(2, ceil_mode=True),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 3),
    )


class _Residual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(6, 6)
        self.b = torch.nn.Linear(6, 6)
        self.c = torch.nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.c(h + torch.relu(self.b(h)))


class _ViewCNN(torch.nn.Module):
    """Flattens with x.view(x.size(0), -1): exported with a dynamic batch axis."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 2, 3, stride=2)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


MLP_X = np.random.default_rng(0).normal(size=(40, 12)).astype(np.float32)
CNN_X = np.random.default_rng(0).normal(size=(25, 1, 6, 6)).astype(np.float32)
RES_X = np.random.default_rng(0).normal(size=(25, 6)).astype(np.float32)


@pytest.mark.parametrize(
    ("net", "x", "n_bits", "rtb"),
    [
        pytest.param(_mlp(False), MLP_X, 5, None, id="mlp-symmetric"),
        pytest.param(_mlp(True), MLP_X, 4, 5, id="mlp-asymmetric-rounding"),
        pytest.param(_cnn(), CNN_X, 4, None, id="cnn-padded"),
        pytest.param(_cnn(), CNN_X, 4, 5, id="cnn-rounding"),
        pytest.param(torch.nn.Sequential(torch.nn.Sigmoid()), MLP_X, 6, None, id="lone-tlu"),
        pytest.param(_cnn_maxpool(), CNN_X, 4, 4, id="cnn-maxpool-flatten"),
        pytest.param(_cnn_avgpool(), CNN_X, 4, None, id="cnn-avgpool-ceil"),
        pytest.param(_Residual(), RES_X, 4, None, id="residual-add"),
        pytest.param(_ViewCNN(), CNN_X, 4, None, id="cnn-view-batch"),
    ],
)
def test_module_compile_simulate_equals_disable(
    net: torch.nn.Module, x: np.ndarray, n_bits: int, rtb: int | None
) -> None:
    module = build_quantized_module(net, x, n_bits=n_bits, rounding_threshold_bits=rtb)
    circuit = module.compile(x)
    assert module.fhe_circuit is circuit and module.forward_fhe is circuit
    assert module.is_compiled
    _predicted_equals_circuit(module)
    q = module.quantize_input(x)
    np.testing.assert_array_equal(
        module.quantized_forward(q, fhe="simulate"), module.quantized_forward(q)
    )
    np.testing.assert_array_equal(module.forward(x, fhe="simulate"), module.forward(x))


def test_module_worst_case_bounds_never_overflow() -> None:
    module = build_quantized_module(_mlp(True), MLP_X, n_bits=4, rounding_threshold_bits=5)
    observed = module.bitwidth_report(MLP_X, accumulator_bounds="observed")
    module.compile(MLP_X, accumulator_bounds="worst_case")
    bits = _predicted_equals_circuit(module)
    assert bits == observed.worst_case_max_bit_width >= observed.observed_max_bit_width
    lo, hi = module.input_quantizers[0].clip_bounds()
    rand = np.random.default_rng(2).integers(lo, hi + 1, size=(30, 12))
    np.testing.assert_array_equal(
        module.quantized_forward(rand, fhe="simulate"), module.quantized_forward(rand)
    )


def test_cnn_worst_case_bounds_never_overflow() -> None:
    module = build_quantized_module(_cnn_avgpool(), CNN_X, n_bits=4, rounding_threshold_bits=4)
    module.compile(CNN_X, accumulator_bounds="worst_case")
    _predicted_equals_circuit(module)
    lo, hi = module.input_quantizers[0].clip_bounds()
    rand = np.random.default_rng(3).integers(lo, hi + 1, size=(20, 1, 6, 6))
    np.testing.assert_array_equal(
        module.quantized_forward(rand, fhe="simulate"), module.quantized_forward(rand)
    )


def test_compile_torch_and_onnx_entry_points() -> None:
    module = compile_torch_model(_mlp(False), torch.from_numpy(MLP_X), n_bits=4)
    assert module.is_compiled
    _predicted_equals_circuit(module)
    np.testing.assert_array_equal(module.forward(MLP_X, fhe="simulate"), module.forward(MLP_X))

    model = export_to_onnx(_mlp(False), MLP_X)
    module = compile_onnx_model(model, MLP_X, n_bits=4)
    _predicted_equals_circuit(module)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 13
    # opset 13 is accepted like by build_quantized_module (issue 13), with the same circuit
    at13 = compile_onnx_model(model, MLP_X, n_bits=4)
    np.testing.assert_array_equal(at13.forward(MLP_X, fhe="simulate"), module.forward(MLP_X))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 6
    with pytest.raises(OpsetError, match="opset 6"):
        compile_onnx_model(model, MLP_X)


def test_compile_torch_model_rejects_brevitas_layers() -> None:
    class QuantLinear(torch.nn.Linear):
        pass

    QuantLinear.__module__ = "brevitas.nn.quant_linear"
    net = torch.nn.Sequential(QuantLinear(4, 2))
    with pytest.raises(ValueError, match="compile_brevitas_qat_model"):
        compile_torch_model(net, np.zeros((3, 4), dtype=np.float32))


def test_real_execution_of_a_tiny_model() -> None:
    """Encrypt, run, decrypt: keys generated once, results equal the clear integers."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    module = build_quantized_module(net, x, n_bits=3)
    module.compile(x, p_error=1e-3)
    _predicted_equals_circuit(module)
    q = module.quantize_input(x[:2])
    np.testing.assert_array_equal(
        module.quantized_forward(q, fhe="execute"), module.quantized_forward(q)
    )
    keys = module.fhe_circuit.keys
    np.testing.assert_array_equal(
        module.forward_fhe.encrypt_run_decrypt(q[:1]), module.quantized_forward(q[:1])
    )
    assert module.fhe_circuit.keys is keys  # reused, not regenerated
