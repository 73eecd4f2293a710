"""A monotone op calibrated by table (``monotone_table``: Relu) evaluates its float function on
the producer's whole integer range instead of on the integers marked present: its extremes are
at the ends of the range, which occur. The modules must be those of the marked path, and the
marks must still be kept wherever a later table op reads them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

from fhequant import _core, build_quantized_module
from fhequant.quantized.calibration import store as walk_store
from fhequant.quantized.ops.univariate import QuantizedRelu
from ptq_helpers import assert_same_module, gemm_node, make_model, mlp

RNG = np.random.default_rng(17)
X = RNG.normal(size=(700, 12)).astype(np.float32)


def _batches(size: int = 100) -> Iterator[np.ndarray]:
    for start in range(0, len(X), size):
        yield X[start : start + size]


def _chain(*acts: str) -> onnx.ModelProto:
    """Gemm -> the activations in turn -> Gemm (graph output)."""
    rng = np.random.default_rng(3)
    inits = {
        "w0": rng.normal(size=(16, 12)).astype(np.float32) / 3,
        "b0": rng.normal(size=16).astype(np.float32) / 10,
        "w1": rng.normal(size=(5, 16)).astype(np.float32) / 4,
        "b1": np.zeros(5, dtype=np.float32),
    }
    nodes = [gemm_node("x", "w0", "b0", "g0", "gemm0")]
    prev = "g0"
    for i, act in enumerate(acts):
        nodes.append(helper.make_node(act, [prev], [f"a{i}"], name=f"act{i}"))
        prev = f"a{i}"
    nodes.append(gemm_node(prev, "w1", "b1", "y", "gemm1"))
    return make_model(nodes, [("x", [None, 12])], [("y", [None, 5])], inits)


def _build(
    monkeypatch: pytest.MonkeyPatch, monotone: bool, model: onnx.ModelProto, data: Any, **kw: Any
) -> tuple[Any, int]:
    """The module and how many blocks were scanned for presence marks."""
    calls = {"n": 0}
    original = _core.int_presence

    def counting(*args: Any) -> Any:
        calls["n"] += 1
        return original(*args)

    with monkeypatch.context() as m:
        m.setattr(QuantizedRelu, "monotone_table", monotone)
        m.setattr(walk_store._core, "int_presence", counting)
        m.setattr("fhequant.quantized.calibration.tables._core.int_presence", counting)
        module = build_quantized_module(model, data, n_bits=6, **kw)
    return module, calls["n"]


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("budget", [None, 0])
def test_relu_needs_no_presence_marks_and_gives_the_same_module(
    monkeypatch: pytest.MonkeyPatch, streamed: bool, budget: int | None
) -> None:
    model = mlp([12, 32, 32, 5], seed=5)
    data = (lambda: _batches()) if streamed else (lambda: X)
    kw = {"batch_size": 64, "memory_budget": budget}
    fast, scans = _build(monkeypatch, True, model, data(), **kw)
    marked, marked_scans = _build(monkeypatch, False, model, data(), **kw)
    assert scans == 0 and marked_scans > 0
    assert_same_module(fast, marked, X[:60])


@pytest.mark.parametrize(
    "acts",
    [("Relu", "Abs"), ("Relu", "Relu", "Sigmoid"), ("Abs", "Relu"), ("Relu", "Relu")],
)
def test_marks_are_kept_where_a_later_table_op_reads_them(
    monkeypatch: pytest.MonkeyPatch, acts: tuple[str, ...]
) -> None:
    model = _chain(*acts)
    fast, scans = _build(monkeypatch, True, model, _batches(), batch_size=64)
    marked, marked_scans = _build(monkeypatch, False, model, _batches(), batch_size=64)
    assert_same_module(fast, marked, X[:60])
    needs_marks = any(a != "Relu" for a in acts)
    assert (scans > 0) == needs_marks and marked_scans > 0


def test_the_relu_implementation_is_non_decreasing() -> None:
    grid = np.concatenate(
        [
            -np.logspace(-300, 300, 200)[::-1],
            [-np.finfo(np.float64).tiny, -0.0, 0.0, np.finfo(np.float64).tiny],
            np.logspace(-300, 300, 200),
        ]
    )
    assert np.all(np.diff(grid) >= 0)
    out = QuantizedRelu.call_impl(QuantizedRelu.__new__(QuantizedRelu), grid)
    assert np.all(np.diff(out) >= 0)
    assert not np.signbit(out[out == 0]).any()  # no negative zero to order
