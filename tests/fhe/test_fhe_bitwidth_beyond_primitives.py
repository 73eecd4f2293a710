"""The bit-width report sees the integer arithmetic outside the matmul/conv primitives.

A QAT integer bias (added to the accumulator as an integer, docs/contract.md §3.8), the encrypted x
encrypted MatMul (quarter-square products, docs/contract.md §3.1) and the encrypted x encrypted Mul
and Div (docs/contract.md §3.4, §3.5) create integer nodes of their own; ``predicted_max_bit_width``
must equal ``maximum_integer_bit_width()`` of the compiled circuit for both accumulator bounds,
and simulate must equal the clear forward.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cost_checks import assert_pbs_predicted
from fhequant import build_quantized_module
from qonnx_graph import DOMAINS, Graph

RNG = np.random.default_rng(11)
X = RNG.uniform(-2.5, 2.5, size=(48, 6)).astype(np.float32)


def _qat_bias_model() -> Any:
    """Quant(x) -> Gemm(Quant(W), Quant(b)) -> Relu, the integer bias wider than the matmul."""
    g = Graph(DOMAINS[0])
    s_x, s_w = 0.25, 0.25
    qx = g.quant("x", s_x, 0.0, 4.0)
    qw = g.quant(g.const(RNG.normal(size=(6, 3))), s_w, 0.0, 3.0, narrow=1)
    qb = g.quant(g.const(np.array([30.0, -40.0, 50.0])), s_x * s_w, 0.0, 16.0)
    return g.model(g.node("Relu", [g.node("Gemm", [qx, qw, qb])]))


class _EncMatMul(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(6, 6)
        self.b = torch.nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.a(x)).reshape(-1, 2, 3)
        return torch.relu(a @ self.b(x).reshape(-1, 3, 2))


class _EncMul(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(6, 4)
        self.b = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x)) * torch.sigmoid(self.b(x))


class _EncDiv(_EncMul):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x)) / (torch.sigmoid(self.b(x)) + 0.5)


def _compile_and_check(module: Any, x: np.ndarray, bounds: str) -> Any:
    module.compile(x, accumulator_bounds=bounds)
    report = module.bitwidth_report()
    got = module.fhe_circuit.graph.maximum_integer_bit_width()
    assert report.predicted_max_bit_width == got, str(report)
    assert_pbs_predicted(module)
    lo, hi = module.input_quantizers[0].clip_bounds()
    q = module.quantize_input(x)
    if bounds == "worst_case":
        q = RNG.integers(int(lo), int(hi) + 1, size=(30, *x.shape[1:]))
    np.testing.assert_array_equal(
        module.quantized_forward(q, fhe="simulate"), module.quantized_forward(q)
    )
    return report


@pytest.mark.parametrize("bounds", ["observed", "worst_case"])
def test_qat_integer_bias_is_in_the_prediction(bounds: str) -> None:
    module = build_quantized_module(_qat_bias_model(), X, import_qat=True, n_bits=8)
    report = _compile_and_check(module, X, bounds)
    gemm = next(r for r in report.rows if r.op_type == "QuantizedGemm")
    recs = [r for r in report.records if r.op == gemm.name]
    matmul = next(r for r in recs if r.label == "accumulator")
    bias = next(r for r in recs if r.label == "add_constant")
    # the bias add is the widest node: the prediction would be short without it
    assert bias.width(report.worst_case) > matmul.width(report.worst_case)
    assert report.predicted_max_bit_width == bias.width(report.worst_case)


# 4-bit worst-case ranges need parameters concrete cannot find (NoParametersFound)
@pytest.mark.parametrize(("bounds", "n_bits"), [("observed", 4), ("worst_case", 3)])
def test_encrypted_matmul_is_in_the_prediction(bounds: str, n_bits: int) -> None:
    x = RNG.normal(size=(40, 6)).astype(np.float32)
    module = build_quantized_module(_EncMatMul(), x, n_bits=n_bits)
    report = _compile_and_check(module, x, bounds)
    row = next(r for r in report.rows if r.op_type == "QuantizedMatMul")
    labels = [r.label for r in report.records if r.op == row.name]
    assert {"add", "subtract", "tlu", "sum", "multiply_constant", "add_constant"} <= set(labels)
    # the MatMul's own nodes are the widest: the prediction would be short without them
    assert (row.wc_bits if report.worst_case else row.bits) == report.predicted_max_bit_width


@pytest.mark.parametrize("bounds", ["observed", "worst_case"])
@pytest.mark.parametrize(("net", "op_type"), [(_EncMul, "QuantizedMul"), (_EncDiv, "QuantizedDiv")])
def test_encrypted_mul_and_div_are_in_the_prediction(net: Any, op_type: str, bounds: str) -> None:
    x = RNG.normal(size=(40, 6)).astype(np.float32)
    module = build_quantized_module(net(), x, n_bits=3)
    report = _compile_and_check(module, x, bounds)
    row = next(r for r in report.rows if r.op_type == op_type)
    labels = [r.label for r in report.records if r.op == row.name]
    assert "multiply" in labels
    if not report.worst_case:  # observed: the product is the widest node
        assert row.bits == report.predicted_max_bit_width
