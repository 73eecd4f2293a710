"""The reduced compile inputset gives the circuit of the full inputset (fhe/compile.py).

``compile_forward`` hands concrete only the rows realising each node's minimum and maximum.
Every test compiles the same module both ways and checks that the circuits are identical:
MLIR text (bit widths and table contents), ``maximum_integer_bit_width()``, PBS count and the
bounds of every node.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fhe_standin import make_standin
from fhequant import build_quantized_module
from fhequant.fhe import compile as fhe_compile
from fhequant.fhe import compile_forward
from fhequant.fhe.compile import build_configuration, extreme_rows
from fhequant.fhe.module import compile_module


def _bounds(circuit: Any) -> list[tuple[str, Any]]:
    return [
        (n.label(), None if n.bounds is None else (int(n.bounds[0]), int(n.bounds[1])))
        for n in circuit.graph.query_nodes(ordered=True)
    ]


def _assert_same_circuit(full: Any, reduced: Any) -> None:
    assert reduced.mlir == full.mlir
    assert reduced.graph.maximum_integer_bit_width() == full.graph.maximum_integer_bit_width()
    assert reduced.programmable_bootstrap_count == full.programmable_bootstrap_count
    assert _bounds(reduced) == _bounds(full)


class _TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(5, 4)
        self.b = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x)) + torch.sigmoid(self.b(y))


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.Sigmoid()
    )
    with torch.no_grad():
        net[2].weight.abs_()  # z_w != 0: the Σx correction nodes
    return net.append(torch.nn.Linear(8, 3))


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.AvgPool2d(2, ceil_mode=True),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 3),
    )


_RNG = np.random.default_rng(0)
MLP_X = _RNG.normal(size=(150, 12)).astype(np.float32)
CNN_X = _RNG.normal(size=(40, 1, 6, 6)).astype(np.float32)
TWO_X = (
    _RNG.normal(size=(80, 5)).astype(np.float32),
    _RNG.normal(size=(80, 3)).astype(np.float32),
)


@pytest.mark.parametrize(
    ("net", "x", "rtb", "bounds"),
    [
        pytest.param(_mlp(), MLP_X, 5, "observed", id="mlp-rounding"),
        pytest.param(_mlp(), MLP_X, 4, "worst_case", id="mlp-worst-case"),
        pytest.param(_cnn(), CNN_X, 4, "observed", id="cnn-pools"),
        pytest.param(_TwoInputs(), TWO_X, None, "observed", id="two-inputs"),
    ],
)
def test_reduced_inputset_gives_the_full_inputset_circuit(
    net: torch.nn.Module,
    x: Any,
    rtb: int | None,
    bounds: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fhe_compile, "MIN_ROWS_TO_REDUCE", 2)  # also reduce the small sets
    module = build_quantized_module(net, x, n_bits=4, rounding_threshold_bits=rtb)
    seen: list[int] = []

    def spy(graph: Any, q_inputs: Any) -> list[int] | None:
        rows = extreme_rows(graph, q_inputs)
        seen.append(-1 if rows is None else len(rows))
        return rows

    monkeypatch.setattr(fhe_compile, "extreme_rows", spy)
    reduced = compile_module(module, x, accumulator_bounds=bounds)
    n_rows = len(x[0]) if isinstance(x, tuple) else len(x)
    assert len(seen) == 1 and 0 < seen[0] < n_rows  # the reduction did happen
    full = compile_module(module, x, accumulator_bounds=bounds, reduce_inputset=False)
    assert len(seen) == 1  # the full compile does not trace the batch
    _assert_same_circuit(full, reduced)
    assert module.bitwidth_report().predicted_max_bit_width == (
        reduced.graph.maximum_integer_bit_width()
    )


def test_large_inputset_is_reduced_by_default() -> None:
    x = np.random.default_rng(4).normal(size=(300, 12)).astype(np.float32)
    module = build_quantized_module(_mlp(), x, n_bits=5, rounding_threshold_bits=6)
    assert len(x) >= fhe_compile.MIN_ROWS_TO_REDUCE
    reduced = module.compile(x)
    full = compile_module(module, x, reduce_inputset=False)
    _assert_same_circuit(full, reduced)
    q = module.quantize_input(x[:50])
    np.testing.assert_array_equal(
        module.quantized_forward(q, fhe="simulate"), module.quantized_forward(q)
    )


def test_extreme_rows_picks_each_nodes_argmin_and_argmax() -> None:
    model, x = make_standin([6, 5, 3], n_bits=4, threshold=None)
    q = np.concatenate([model.quantize_input(x)] * 3)
    from concrete import fhe

    graph = fhe.Compiler(model.quantized_forward, {"q": "encrypted"}).trace([q])
    rows = extreme_rows(graph, [q])
    assert rows is not None and rows[0] == 0 and rows == sorted(set(rows))
    values = graph.evaluate(q)
    for node in graph.query_nodes(ordered=True):
        v = np.asarray(values[node])
        if node.operation.name == "Constant":
            continue
        flat = v.reshape(len(q), -1)
        assert flat[rows].min() == v.min() and flat[rows].max() == v.max()


def test_unattributable_rows_fall_back_to_the_full_inputset() -> None:
    """A node without a leading row axis (a sum over rows) cannot be reduced."""
    q = np.random.default_rng(5).integers(0, 8, size=(70, 4))

    def forward(v: Any) -> Any:
        return np.sum(v) + v

    config = build_configuration()
    from concrete import fhe

    graph = fhe.Compiler(forward, {"v": "encrypted"}).trace([q])
    assert extreme_rows(graph, [q]) is None
    circuit = compile_forward(forward, ["v"], [q], config)
    full = compile_forward(forward, ["v"], [q], config, reduce_inputset=False)
    _assert_same_circuit(full, circuit)
