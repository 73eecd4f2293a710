"""Issue 13, torch export: the legacy (TorchScript) and the dynamo exporter, both with a
dynamic batch axis; each exported model is checked against torch and onnxruntime at batch
sizes other than the one exported."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

from fhequant.errors import ConfigurationError, MissingDependencyError
from fhequant.onnx import NumpyModule
from fhequant.quantized.build import build_quantized_module
from fhequant.torch import export_to_onnx
from onnx_testing import run_ort

EXPORTERS = [
    "legacy",
    pytest.param(
        "dynamo",
        # torch.export + onnxscript (a test dependency) take 8-25 s per model
        marks=[pytest.mark.slow],
    ),
]


class Flatten(torch.nn.Module):
    """Conv, ReLU, x.view(x.size(0), -1), Linear: the dynamic-batch reshape of issue 13."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3)
        self.pool = torch.nn.AvgPool2d(2)
        self.fc = torch.nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.conv(x)))
        return self.fc(y.view(y.size(0), -1))


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(5, 3)
        self.b = torch.nn.Linear(2, 3)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.a(left)) * self.b(right).reshape(right.shape[0], -1)


def _torch_out(model: torch.nn.Module, *xs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(x) for x in xs)).numpy()


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_dynamic_batch_view(exporter: str) -> None:
    torch.manual_seed(0)
    model = Flatten().eval()
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(8, 1, 6, 6)).astype(np.float32)
    proto = export_to_onnx(model, calib, exporter=exporter)
    module = NumpyModule(proto)
    assert module.input_names == ("x",)
    for batch in (1, 2, 3, 17):
        x = rng.normal(size=(batch, 1, 6, 6)).astype(np.float32)
        got = module(x)
        assert got.shape == (batch, 4)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, _torch_out(model, x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, run_ort(proto, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_two_inputs_and_from_torch(exporter: str) -> None:
    torch.manual_seed(1)
    model = TwoInputs().eval()
    rng = np.random.default_rng(1)
    left = rng.normal(size=(1, 5)).astype(np.float32)  # a single sample: dynamo needs 2
    right = rng.normal(size=(1, 2)).astype(np.float32)
    module = NumpyModule.from_torch(model, (left, right), exporter=exporter)
    assert module.input_names == ("left", "right")
    for batch in (1, 4):
        xl = rng.normal(size=(batch, 5)).astype(np.float32)
        xr = rng.normal(size=(batch, 2)).astype(np.float32)
        np.testing.assert_allclose(module(xl, xr), _torch_out(model, xl, xr), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_dynamo_export_quantizes_like_legacy() -> None:
    """The two exporters' graphs calibrate to 8-bit modules that agree with float."""
    torch.manual_seed(2)
    model = Flatten().eval()
    x = np.random.default_rng(2).normal(size=(64, 1, 6, 6)).astype(np.float32)
    ref = _torch_out(model, x)
    for exporter in ("legacy", "dynamo"):
        module = build_quantized_module(
            NumpyModule.from_torch(model, x, exporter=exporter), x, n_bits=8
        )
        out = module.forward(x)
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def test_legacy_export_raises_no_deprecation_warning() -> None:
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_to_onnx(Flatten().eval(), np.zeros((2, 1, 6, 6), np.float32))


def test_legacy_is_the_default_and_keeps_opset_14() -> None:
    proto = export_to_onnx(Flatten().eval(), np.zeros((2, 1, 6, 6), np.float32))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [14]


def test_unknown_exporter() -> None:
    with pytest.raises(ConfigurationError, match="exporter"):
        export_to_onnx(Flatten(), np.zeros((2, 1, 6, 6), np.float32), exporter="onnx")  # type: ignore[arg-type]


def test_dynamo_without_onnxscript_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes ``import onnxscript`` raise ImportError, as on a
    # machine without it.
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(MissingDependencyError, match="onnxscript"):
        export_to_onnx(Flatten(), np.zeros((2, 1, 6, 6), np.float32), exporter="dynamo")
