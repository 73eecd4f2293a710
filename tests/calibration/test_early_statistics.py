"""Statistics gathered while the graph inputs load (fhequant.quantized.calibration.early).

The ops that read a graph input alone get their min/max from the loading pass; the module
must be the one their own statistics pass gives (early.ENABLED False), whatever the blocks,
and the ops that do not qualify must keep their pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from onnx import helper

from fhequant import build_quantized_module
from fhequant.errors import NonFiniteError
from fhequant.quantized.calibration import early
from fhequant.quantized.calibration.walk import quantize_module
from ptq_helpers import (
    assert_same_module,
    build_with_and_without,
    cnn,
    make_model,
    mlp,
    spy_fused_statistics,
)

RNG = np.random.default_rng(7)
X_MLP = RNG.normal(size=(900, 12)).astype(np.float32)
X_CNN = RNG.normal(size=(300, 1, 8, 8)).astype(np.float32)


def _batches(x: np.ndarray, sizes: tuple[int, ...] = (5, 128, 33, 1, 300)) -> Iterator[Any]:
    start, i = 0, 0
    while start < len(x):
        yield x[start : start + sizes[i % len(sizes)]]
        start, i = start + sizes[i % len(sizes)], i + 1


class _Reiterable:
    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __iter__(self) -> Iterator[Any]:
        return _batches(self.x)


def _spy(m: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The outputs whose statistics the loading pass ("early") and the fused statistics pass
    ("pass") gave."""
    seen: dict[str, list[str]] = {"early": [], "pass": []}
    take = early.EarlyStatistics.take

    def spy_take(self: early.EarlyStatistics, out: str) -> Any:
        found = take(self, out)
        if found is not None:
            seen["early"].append(out)
        return found

    m.setattr(early.EarlyStatistics, "take", spy_take)
    spy_fused_statistics(m, seen["pass"])
    return seen


def _off(m: pytest.MonkeyPatch) -> None:
    m.setattr(early, "ENABLED", False)


@pytest.mark.parametrize("data", ["array", "batches", "reiterable"])
@pytest.mark.parametrize("batch_size", [64, 4096])
def test_the_first_gemm_is_served_while_loading(
    monkeypatch: pytest.MonkeyPatch, data: str, batch_size: int
) -> None:
    model = mlp([12, 24, 16, 5], seed=3)
    for rounding in (None, 4):
        kwargs = {"n_bits": 5, "rounding_threshold_bits": rounding, "batch_size": batch_size}
        modules = []
        for switch in (_spy, _off):
            source: Any = {
                "array": X_MLP,
                "batches": _batches(X_MLP),  # one-shot: a new one per build
                "reiterable": _Reiterable(X_MLP),
            }[data]
            with monkeypatch.context() as m:
                seen = switch(m)
                modules.append(build_quantized_module(model, source, **kwargs))
            if switch is _spy:
                assert seen == {"early": ["g0"], "pass": ["g1", "y"]}
        assert_same_module(*modules, X_MLP[:50])


def test_a_conv_on_the_input_is_served_while_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    for batch_size in (50, 4096):
        with_early, without, seen = build_with_and_without(
            monkeypatch,
            cnn(seed=2),
            X_CNN,
            _spy,
            _off,
            n_bits=5,
            rounding_threshold_bits=5,
            batch_size=batch_size,
        )
        assert seen["early"] == ["c1"] and "c1" not in seen["pass"]
        assert_same_module(with_early, without, X_CNN[:20])


def _two_readers() -> Any:
    """A Gemm and a MatMul both read x; an Add joins them."""
    rng = np.random.default_rng(5)
    inits = {
        "w": rng.normal(size=(6, 12)).astype(np.float32),
        "b": rng.normal(size=6).astype(np.float32),
        "m": rng.normal(size=(12, 6)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="gemm", transB=1),
        helper.make_node("MatMul", ["x", "m"], ["h"], name="matmul"),
        helper.make_node("Add", ["g", "h"], ["y"], name="add"),
    ]
    return make_model(nodes, [("x", [None, 12])], [("y", [None, 6])], inits)


def test_every_op_reading_the_input_alone_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    with_early, without, seen = build_with_and_without(
        monkeypatch, _two_readers(), X_MLP, _spy, _off, n_bits=6, batch_size=100
    )
    assert sorted(seen["early"]) == ["g", "h"] and seen["pass"] == []
    assert_same_module(with_early, without, X_MLP[:50])


def test_a_zero_extreme_is_resolved_as_by_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # non-negative inputs and weights, no bias: rows of zeros give a zero minimum, which the
    # kernels leave to the materialised float op
    rng = np.random.default_rng(2)
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="op")],
        [("x", [None, 12])],
        [("y", [None, 5])],
        {"w": np.abs(rng.normal(size=(12, 5))).astype(np.float32)},
    )
    x = np.abs(X_MLP)
    x[::3] = 0.0
    with_early, without, seen = build_with_and_without(
        monkeypatch, model, x, _spy, _off, n_bits=6, batch_size=64
    )
    assert seen == {"early": ["y"], "pass": []}
    assert_same_module(with_early, without, x[:50])


@pytest.mark.parametrize(
    "calibration",
    [{"bias_correction": True}, "percentile", {"ops": {"gemm0": "mse"}}],
)
def test_ops_whose_statistics_need_more_keep_their_pass(
    monkeypatch: pytest.MonkeyPatch, calibration: Any
) -> None:
    model = mlp([12, 8, 4], seed=1)
    with_early, without, seen = build_with_and_without(
        monkeypatch, model, X_MLP, _spy, _off, n_bits=6, batch_size=128, calibration=calibration
    )
    assert seen["early"] == []
    assert_same_module(with_early, without, X_MLP[:50])


def test_weights_computed_by_the_graph_keep_their_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # the walk itself (no ONNX pre-processing, which would fold the Transpose): the weight is
    # known only when the Transpose node is folded, after loading
    rng = np.random.default_rng(4)
    model = make_model(
        [
            helper.make_node("Transpose", ["wt"], ["w"], name="t", perm=[1, 0]),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="op"),
        ],
        [("x", [None, 12])],
        [("y", [None, 5])],
        {"wt": rng.normal(size=(5, 12)).astype(np.float32)},
    )
    seen = _spy(monkeypatch)
    got = quantize_module(model, X_MLP, n_bits=6, block_rows=128)
    assert seen == {"early": [], "pass": ["y"]}
    monkeypatch.setattr(early, "ENABLED", False)
    want = quantize_module(model, X_MLP, n_bits=6, block_rows=128)
    _, op_got = got["quant_layers_dict"]["y"]
    _, op_want = want["quant_layers_dict"]["y"]
    assert op_got.output_quant_stats.rmin == op_want.output_quant_stats.rmin
    assert op_got.output_quant_stats.rmax == op_want.output_quant_stats.rmax


def test_a_non_finite_result_is_reported_by_the_ops_own_pass() -> None:
    model = mlp([12, 6, 2], seed=1, scale=1e30)
    x = (X_MLP * 1e20).astype(np.float32)
    messages = []
    for enabled in (True, False):
        old = early.ENABLED
        early.ENABLED = enabled
        try:
            with pytest.raises(NonFiniteError, match=r"gemm0.*'g0'") as info:
                build_quantized_module(model, _batches(x), n_bits=4, batch_size=64)
        finally:
            early.ENABLED = old
        messages.append(str(info.value))
    assert messages[0] == messages[1]
