"""Generic QAT import: a torch model that fake-quantizes itself (docs/contract.md §4.2
QAT, §4.5)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fhequant import build_quantized_module, compile_torch_model  # noqa: E402
from fhequant.errors import UnquantizedTensorError  # noqa: E402

BITS = 3
RNG = np.random.default_rng(3)
# The module input quantizer (model_inputs = 5 bits, docs/contract.md §4.6) moves the data by less
# than half a step of the model's own 0.25 grid when the data sits on that grid.
X = (RNG.integers(-6, 7, size=(80, 5)) * 0.25).astype(np.float32)


def fq(x: Any, scale: float) -> Any:
    """Signed 3-bit fake quantization written by hand: round, clamp to [-4, 3], rescale."""
    return torch.clamp(torch.round(x / scale), -(2 ** (BITS - 1)), 2 ** (BITS - 1) - 1) * scale


class FakeQuantMlp(torch.nn.Module):
    """fq → Linear → fq (or ReLU: not quantized) → Linear, weights on a 3-bit grid."""

    def __init__(self, quantize_hidden: bool = True) -> None:
        super().__init__()
        self.quantize_hidden = quantize_hidden
        self.fc1 = torch.nn.Linear(5, 6)
        self.fc2 = torch.nn.Linear(6, 2)
        with torch.no_grad():
            for fc, s in ((self.fc1, 0.5), (self.fc2, 0.25)):
                grid = RNG.integers(-4, 4, size=tuple(fc.weight.shape))
                grid.flat[:2] = [-4, 3]  # both ends of the grid: QAT scale Δ/(2^n - 1) = s
                fc.weight.copy_(torch.from_numpy(grid * s).float())

    def forward(self, x: Any) -> Any:
        h = self.fc1(fq(x, 0.25))
        # QAT import quantizes with zp 0 and scale (max - min)/(2^n - 1) (docs/contract.md §1.3):
        # the grid must be signed and reached at both ends, which the clamp ensures here.
        h = fq(h, 0.5) if self.quantize_hidden else torch.relu(h)
        return self.fc2(h)


def _reference(model: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(model(torch.from_numpy(x)).numpy())


def test_fake_quantized_model_imports_exactly() -> None:
    model = FakeQuantMlp().eval()
    module = build_quantized_module(model, X, import_qat=True, n_bits=BITS)
    out = module.forward(X)
    # Every variable Gemm input already sits on the 3-bit grid: nothing is re-rounded, so the
    # only difference is the rounding of the 5-bit (model_outputs) graph output: none, since
    # graph-output Gemms return their raw accumulator.
    np.testing.assert_allclose(out, _reference(model, X), rtol=1e-5, atol=1e-5)
    gemms = [
        op for _, op in module.quant_layers_dict.values() if type(op).__name__ == "QuantizedGemm"
    ]
    assert len(gemms) == 2
    assert all(op.input_quant_opts.is_qat and op.input_quant_opts.n_bits == BITS for op in gemms)


def test_fake_quantized_model_compiles() -> None:
    model = FakeQuantMlp().eval()
    module = compile_torch_model(model, X, import_qat=True, n_bits=BITS)
    q = module.quantize_input(X[:10])
    np.testing.assert_array_equal(
        module.quantized_forward(q, fhe="simulate"), module.quantized_forward(q)
    )


def test_missing_fake_quantization_is_reported() -> None:
    model = FakeQuantMlp(quantize_hidden=False).eval()
    module = build_quantized_module(model, X, import_qat=True, n_bits=BITS)
    relu_out = next(
        out
        for out, (_, op) in module.quant_layers_dict.items()
        if type(op).__name__ == "QuantizedRelu"
    )
    with pytest.raises(UnquantizedTensorError, match="QuantIdentity") as info:
        module.forward(X)
    message = str(info.value)
    assert relu_out in message and "Gemm" in message
    # Reported at compile too (the check runs on the first clear forward of the module).
    with pytest.raises(UnquantizedTensorError):
        compile_torch_model(model, X, import_qat=True, n_bits=BITS)
