"""Models from Concrete ML's suite that fhequant refused or computed differently (issue 14):
shape arithmetic on raw tensors, Cast to integer types, the sum of two QuantLinear outputs,
and several modules compiled in one process (no state leaks from one to the next)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fhequant.errors import QuantizedOpError
from fhequant.quantized import build_quantized_module
from fhequant.quantized.ops import QuantizedCast
from fhequant.torch import compile_torch_model

RNG = np.random.default_rng(140)
X = RNG.normal(size=(40, 4)).astype(np.float32)


class ShapeArithmetic(torch.nn.Module):
    """x.reshape(x.shape + (1,)).expand(...): Shape/Concat/Equal/Where on int64 tensors."""

    def forward(self, x: Any) -> Any:
        y = x.reshape(x.shape + (1,)).expand(x.shape + (3,))  # noqa: RUF005
        return y.sum(-1)


class CastToInt64(torch.nn.Module):
    def forward(self, x: Any) -> Any:
        return (x * 3).to(torch.int64).to(torch.float32) + 1.0


def test_shape_arithmetic_calibrates() -> None:
    module = build_quantized_module(ShapeArithmetic(), X, n_bits=6)
    expected = ShapeArithmetic()(torch.tensor(X)).numpy()
    step = module.output_quantizers[0].scale
    assert np.abs(module.forward(X) - expected).max() <= 3 * step


def test_cast_to_int64_of_encrypted_values() -> None:
    module = build_quantized_module(CastToInt64(), X, n_bits=6)
    out = module.forward(X)
    # the output takes the integer values of the cast (plus 1), on the output grid
    assert len(np.unique(np.round(out, 6))) <= len(np.unique(np.trunc(X * 3))) + 1
    expected = CastToInt64()(torch.tensor(X)).numpy()
    # the input is fake-quantized before the cast: a truncation may move by one
    assert np.abs(out - expected).max() <= 1.0 + module.output_quantizers[0].scale


def test_cast_names_an_unsupported_target_type() -> None:
    with pytest.raises(QuantizedOpError, match=r"QuantizedCast 'c'.*STRING"):
        QuantizedCast(6, "c", to=8)
    QuantizedCast(6, "c", to=7)  # INT64


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_qat_sum_of_two_quant_linear_outputs_compiles() -> None:
    brevitas_nn = pytest.importorskip("brevitas.nn")
    from fhequant.torch import compile_brevitas_qat_model

    class AddTwo(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.q = brevitas_nn.QuantIdentity(bit_width=4, return_quant_tensor=True)
            self.a = brevitas_nn.QuantLinear(4, 3, bias=True, weight_bit_width=4)
            self.b = brevitas_nn.QuantLinear(4, 3, bias=True, weight_bit_width=4)
            self.o = brevitas_nn.QuantIdentity(bit_width=4)

        def forward(self, x: Any) -> Any:
            x = self.q(x)
            return self.o(self.a(x) + self.b(x))

    model = AddTwo().eval()
    module = compile_brevitas_qat_model(model, X[:20], n_bits=4)
    q = module.quantize_input(X[:10])
    np.testing.assert_array_equal(
        module.quantized_forward(q, fhe="simulate"), module.quantized_forward(q)
    )
    expected = model(torch.tensor(X[:10])).detach().numpy()
    levels = np.unique(expected)
    step = np.min(np.diff(levels)) if len(levels) > 1 else 1.0
    assert np.abs(module.forward(X[:10]) - expected).max() <= 2 * step


class _Branching(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = torch.nn.Linear(4, 6)
        self.b = torch.nn.Linear(4, 6)
        self.c = torch.nn.Linear(6, 3)

    def forward(self, x: Any) -> Any:
        return self.c(torch.relu(self.a(x)) + torch.sigmoid(self.b(x)))


class _Chain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.a = torch.nn.Linear(4, 5)
        self.c = torch.nn.Linear(5, 2)

    def forward(self, x: Any) -> Any:
        return self.c(torch.tanh(self.a(x)))


def _clear_and_simulated(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    module = compile_torch_model(model, X, n_bits=4, rounding_threshold_bits=6)
    q = module.quantize_input(X[:25])
    state = [
        (out, op.lsbs_to_remove if hasattr(op, "lsbs_to_remove") else None, op.output_quant_params)
        for out, (_, op) in module.quant_layers_dict.items()
    ]
    return module.quantized_forward(q), module.quantized_forward(q, fhe="simulate"), state


@pytest.mark.slow
@pytest.mark.parametrize("order", [("branching", "chain"), ("chain", "branching")])
def test_modules_compiled_in_one_process_do_not_share_state(order: tuple[str, str]) -> None:
    models = {"branching": _Branching, "chain": _Chain}
    results = {}
    for name in order + order:  # each twice: the second build sees the other's leftovers
        clear, simulated, state = _clear_and_simulated(models[name]())
        np.testing.assert_array_equal(simulated, clear)
        results.setdefault(name, []).append((clear, state))
    for (first, first_state), (second, second_state) in results.values():
        np.testing.assert_array_equal(first, second)
        assert repr(first_state) == repr(second_state)
