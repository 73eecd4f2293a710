"""The memory budget of the calibration store: chosen from the machine's memory when the caller
gives None (streaming.auto_memory_budget), validated when given, and never a change to the
module (only to where the blocks wait between passes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fhequant import build_quantized_module
from fhequant.errors import ArgumentError, ConfigurationError
from fhequant.quantized import streaming
from fhequant.quantized.calibration import walk
from fhequant.quantized.streaming import (
    AUTO_MEMORY_BUDGET_MAX,
    DEFAULT_MEMORY_BUDGET,
    auto_memory_budget,
    resolve_memory_budget,
    usable_memory,
)
from ptq_helpers import assert_same_module, mlp

GIB = 1 << 30
X = np.random.default_rng(5).normal(size=(900, 12)).astype(np.float32)


@pytest.mark.parametrize(
    ("usable", "expected"),
    [
        (None, DEFAULT_MEMORY_BUDGET),
        (256 << 20, DEFAULT_MEMORY_BUDGET),  # 16 MiB is below the floor
        (2 * GIB, 128 << 20),
        (4 * GIB, 256 << 20),
        (8 * GIB, AUTO_MEMORY_BUDGET_MAX),
        (24 * GIB, AUTO_MEMORY_BUDGET_MAX),
        (1 << 50, AUTO_MEMORY_BUDGET_MAX),
    ],
)
def test_auto_budget_is_a_share_of_the_usable_memory_within_bounds(
    monkeypatch: pytest.MonkeyPatch, usable: int | None, expected: int
) -> None:
    monkeypatch.setattr(streaming, "usable_memory", lambda: usable)
    assert auto_memory_budget() == expected
    assert resolve_memory_budget(None) == expected


def test_usable_memory_takes_the_lower_cgroup_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    unlimited, limited, absent = tmp_path / "max", tmp_path / "limit", tmp_path / "absent"
    unlimited.write_text("max\n")
    limited.write_text(f"{3 << 30}\n")
    ram = usable_memory()
    assert ram is None or ram > 0
    monkeypatch.setattr(streaming, "_CGROUP_LIMITS", (str(unlimited), str(absent)))
    assert usable_memory() == ram  # "max" and a missing file set no limit
    monkeypatch.setattr(streaming, "_CGROUP_LIMITS", (str(unlimited), str(limited)))
    assert usable_memory() == (3 << 30 if ram is None else min(ram, 3 << 30))


def test_the_machines_budget_lies_within_the_bounds() -> None:
    assert DEFAULT_MEMORY_BUDGET <= auto_memory_budget() <= AUTO_MEMORY_BUDGET_MAX


@pytest.mark.parametrize("given", [0, 1, 20_000, np.int64(5 << 20)])
def test_an_explicit_budget_is_kept(given: Any) -> None:
    assert resolve_memory_budget(given) == int(given)
    assert type(resolve_memory_budget(given)) is int


@pytest.mark.parametrize(
    ("given", "error", "match"),
    [
        (-1, ConfigurationError, "memory_budget must be >= 0"),
        (True, ArgumentError, "got bool"),
        ("1GiB", ArgumentError, "got str"),
        (1.5e9, ArgumentError, "got float"),
    ],
)
def test_a_bad_budget_is_named(given: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_memory_budget(given)
    with pytest.raises(error, match=match):
        build_quantized_module(mlp([12, 32, 32, 5], seed=5), X, n_bits=6, memory_budget=given)


def _batches(size: int = 100) -> Iterator[np.ndarray]:
    for start in range(0, len(X), size):
        yield X[start : start + size]


def test_the_default_budget_keeps_small_data_in_memory_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[int, bool]] = []
    original = walk.ModuleCalibrator.walk

    def spy(self: walk.ModuleCalibrator, *args: Any) -> dict[str, Any]:
        result = original(self, *args)
        seen.append((self.memory_budget, result["spilled"]))
        return result

    monkeypatch.setattr(walk.ModuleCalibrator, "walk", spy)
    default = build_quantized_module(
        mlp([12, 32, 32, 5], seed=5), _batches(), n_bits=6, batch_size=64
    )
    spilled = build_quantized_module(
        mlp([12, 32, 32, 5], seed=5), _batches(), n_bits=6, batch_size=64, memory_budget=0
    )
    assert seen == [(auto_memory_budget(), False), (0, True)]
    assert_same_module(default, spilled, X[:50])
