"""Every univariate function reaches concrete as a table lookup it accepts (issues 13, 14).

Each small torch model below used to fail while the compile traced it (a numpy or scipy
function of an op's float path reached concrete's tracer: ``np.erf``, ``np.ndim``,
``np.shape``, "setting an array element with a sequence"). Each now compiles, simulates to
the clear integers and its BitWidthReport predicts the circuit's width. The errors concrete
raises while compiling reach the user as ``fhequant.errors`` types naming the op.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cost_checks import assert_pbs_predicted
from fhequant import compile_torch_model
from fhequant.errors import BitWidthError, CompilationError, FhequantError, NoParametersError
from fhequant.fhe import build_configuration, compile_forward
from fhequant.fhe.bitwidth import check_encrypted_products
from fhequant.fhe.compile import compilation_error
from fhequant.quantized.exec import run_op

X = np.random.default_rng(3).normal(size=(30, 4)).astype(np.float32)


class _Fn(torch.nn.Module):
    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _step(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0.1, torch.ones_like(x), torch.zeros_like(x)) + x


def _cast(x: torch.Tensor) -> torch.Tensor:
    return (x > 0.1).to(torch.float32) * 2.0 + x


def _trig(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) + torch.cos(x) * torch.atan(x)


def _two_branch_where(x: torch.Tensor) -> torch.Tensor:
    # the condition and the value both derive from the one encrypted tensor: one table
    return torch.where(x > 0, x, 0.1 * x * x)


def _logic(x: torch.Tensor) -> torch.Tensor:
    return torch.logical_or(x > 0.5, x < -0.5).to(torch.float32) * x


MIDDLES: dict[str, Any] = {
    "gelu": lambda: torch.nn.GELU(),
    "softshrink": lambda: torch.nn.Softshrink(0.3),
    "step_where": lambda: _Fn(_step),
    "cast_of_comparison": lambda: _Fn(_cast),
    "batchnorm1d_after_relu": lambda: torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm1d(6)),
    "mish": lambda: torch.nn.Mish(),
    "trig": lambda: _Fn(_trig),
    "softplus": lambda: torch.nn.Softplus(),
    "where_of_two_paths": lambda: _Fn(_two_branch_where),
    "or_of_comparisons": lambda: _Fn(_logic),
}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), MIDDLES[name](), torch.nn.Linear(6, 2))
    if name == "batchnorm1d_after_relu":
        bn = model[1][1]
        with torch.no_grad():
            bn.running_mean.uniform_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


#: compiled in the default run; the others are slow (a few seconds each)
FAST = ("gelu", "where_of_two_paths")


@pytest.mark.parametrize(
    "name",
    [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(MIDDLES)],
)
def test_univariate_model_compiles_and_simulates(name: str) -> None:
    model = _model(name)
    module = compile_torch_model(model, X, n_bits=4, rounding_threshold_bits=5)
    report = module.bitwidth_report()
    assert report.predicted_max_bit_width == module.fhe_circuit.graph.maximum_integer_bit_width()
    assert_pbs_predicted(module)
    q = module.quantize_input(X)
    np.testing.assert_array_equal(
        module.quantized_forward(q, fhe="simulate"), module.quantized_forward(q)
    )
    # the clear path follows the float model
    with torch.no_grad():
        ref = model(torch.from_numpy(X)).numpy()
    out = module.forward(X)
    assert np.abs(out - ref).mean() < 0.25 * (np.abs(ref).max() + 1e-6)


# --- concrete's errors become fhequant's ---------------------------------------------------


class _FftOp:
    """An op whose integer code hands concrete a numpy function it cannot trace."""

    def q_impl(self, x: Any) -> Any:
        return np.fft.fft(x)


def test_a_trace_error_names_the_op_and_keeps_concrete_s_error() -> None:
    def forward(x: Any) -> Any:
        return run_op("my_fft_node", _FftOp(), x)

    q = np.arange(8).reshape(2, 4)
    with pytest.raises(CompilationError, match="my_fft_node") as info:
        compile_forward(forward, ["x"], [q], build_configuration())
    assert info.value.op == "my_fft_node"
    assert isinstance(info.value, FhequantError)
    assert info.value.__cause__ is not None
    assert "not supported" in str(info.value.__cause__)


def test_no_parameters_found_is_a_typed_error() -> None:
    cause = RuntimeError("Optimization failed: NoParametersFound")
    err = compilation_error(cause, op="mul_node")
    assert isinstance(err, NoParametersError)
    assert isinstance(err, BitWidthError)  # a bit-width problem: except ValueError works
    assert err.op == "mul_node"
    assert "mul_node" in str(err) and "NoParametersFound" in str(err)
    other = compilation_error(ValueError("something else"))
    assert type(other) is CompilationError and other.op is None


# --- encrypted x encrypted products ---------------------------------------------------------


class _EncMul(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(4, 3)
        self.b = torch.nn.Linear(4, 3)
        self.c = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.a(x)) * torch.sigmoid(self.b(x)))


def test_the_report_says_what_concrete_needs_for_an_encrypted_product() -> None:
    from fhequant import build_quantized_module

    module = build_quantized_module(_EncMul(), X, n_bits=3)
    report = module.bitwidth_report(X)
    row = next(r for r in report.rows if r.op_type == "QuantizedMul")
    recs = [r for r in report.records if r.op == row.name]
    product = next(r for r in recs if r.label == "multiply")
    operands = [r for r in recs if r.label == "tlu"][:2]  # the copies multiplied
    assert row.product_operand_bits == max(r.bits for r in operands) + 1
    assert row.product_bits == product.bits
    assert f"{row.product_operand_bits}-bit inputs" in str(report)
    module.compile(X)
    assert report.predicted_max_bit_width == module.fhe_circuit.graph.maximum_integer_bit_width()
    assert_pbs_predicted(module)
    # a limit below the product's lookup input fails before compiling, naming the op and
    # the fixes (rounding the product, fewer input bits)
    assert row.feeds_tlu and row.tlu_input_bits == product.bits
    with pytest.raises(BitWidthError, match=f"{row.name}.*rounding_threshold_bits.*n_bits"):
        check_encrypted_products(report, max_product_bits=row.tlu_input_bits - 1)
    check_encrypted_products(report, max_product_bits=row.tlu_input_bits)
