"""Blocks freed by their last reader (WalkStore.recyclable): the output pass of a tensor's last
consumer frees each input block once read, so the output blocks of that pass take its memory
or spill region. The modules must be the ones without it, and the spill files must grow less."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from fhequant import QuantizedModule, build_quantized_module
from fhequant.quantized import spill
from fhequant.quantized.calibration import store as walk_store
from fhequant.quantized.tensor_store import TensorStore
from ptq_helpers import assert_same_module, cnn, mlp

RNG = np.random.default_rng(21)
X = RNG.normal(size=(1200, 12)).astype(np.float32)
X_CNN = RNG.normal(size=(300, 1, 8, 8)).astype(np.float32)


def _batches(x: np.ndarray, size: int = 100) -> Iterator[Any]:
    for start in range(0, len(x), size):
        yield x[start : start + size]


def _build(
    monkeypatch: pytest.MonkeyPatch, recycle: bool, model: Any, data: Any, **kwargs: Any
) -> tuple[QuantizedModule, dict[str, int]]:
    """The module, how many blocks were recycled and how far the spill files grew."""
    seen = {"recycled": 0, "file_bytes": 0}
    original_recycle, original_place = TensorStore.recycle, TensorStore._place

    def spy_recycle(self: TensorStore, name: str, index: int) -> None:
        seen["recycled"] += 1
        original_recycle(self, name, index)

    def spy_place(self: TensorStore, nbytes: int) -> tuple[Any, int]:
        found = original_place(self, nbytes)
        seen["file_bytes"] = max(seen["file_bytes"], self._end)
        return found

    with monkeypatch.context() as m:
        m.setattr(walk_store, "RECYCLE", recycle)
        m.setattr(TensorStore, "recycle", spy_recycle)
        m.setattr(TensorStore, "_place", spy_place)
        module = build_quantized_module(model, data, **kwargs)
    return module, seen


@pytest.mark.parametrize("budget", [0, 20_000, 1 << 30])
@pytest.mark.parametrize("streamed", [False, True])
def test_recycling_gives_the_same_module_and_smaller_spill_files(
    monkeypatch: pytest.MonkeyPatch, budget: int, streamed: bool
) -> None:
    monkeypatch.setattr(spill, "DIRECT", False)  # cached spill files: blocks take their bytes
    model = mlp([12, 32, 32, 5], seed=5)
    kwargs = {"n_bits": 6, "batch_size": 64, "memory_budget": budget}
    modules, seen = [], []
    for recycle in (True, False):
        data = _batches(X) if streamed else X
        module, found = _build(monkeypatch, recycle, model, data, **kwargs)
        modules.append(module)
        seen.append(found)
    assert_same_module(*modules, X[:40])
    assert seen[1]["recycled"] == 0
    # freed block by block: x (19 blocks) by gemm0's output pass, g0 (the base of relu0's
    # view) by gemm1's, g1 by gemm2's, which reads its last block only (a graph output)
    assert seen[0]["recycled"] == 19 + 19 + 1
    if budget == 0:
        # g1 takes g0's regions, and g0 those of x when x was spilled (streamed): the files
        # hold one tensor's worth of blocks instead of two
        want = X.nbytes if streamed else 1200 * 32
        assert seen[0]["file_bytes"] == want
        assert seen[1]["file_bytes"] == want + 1200 * 32


def test_no_block_is_freed_when_rounding_takes_several_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = mlp([12, 32, 5], seed=2)
    kwargs = {"n_bits": 6, "batch_size": 64, "memory_budget": 0, "rounding_threshold_bits": 5}
    with_, seen = _build(monkeypatch, True, model, X, **kwargs)
    without, _ = _build(monkeypatch, False, model, X, **kwargs)
    assert seen["recycled"] == 0
    assert_same_module(with_, without, X[:40])


def test_the_cnn_is_the_same_with_recycling(monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = {"n_bits": 5, "batch_size": 50, "memory_budget": 0}
    with_, seen = _build(monkeypatch, True, cnn(seed=6), X_CNN, **kwargs)
    without, _ = _build(monkeypatch, False, cnn(seed=6), X_CNN, **kwargs)
    assert seen["recycled"] > 0
    assert_same_module(with_, without, X_CNN[:20])
