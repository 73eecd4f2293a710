"""The calibration's TensorStore spill files (raw bytes, freed regions overwritten first):
blocks of several tensors, dtypes and shapes interleaved, recycled and dropped, read back in
any order, equal to what was put."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant.errors import FhequantError
from fhequant.quantized import spill
from fhequant.quantized.tensor_store import TensorStore

DTYPES = [np.float32, np.float64, np.int64, np.int16, np.bool_]


@contextlib.contextmanager
def _writing(behind: bool) -> Iterator[None]:
    """Spill writes by the helper thread (``behind``) or at once, for the block."""
    before = spill.WRITE_BEHIND
    spill.WRITE_BEHIND = behind
    try:
        yield
    finally:
        spill.WRITE_BEHIND = before


@settings(max_examples=60, deadline=None)
@given(
    puts=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(DTYPES),
            st.lists(st.integers(0, 5), min_size=0, max_size=3),
        ),
        min_size=1,
        max_size=25,
    ),
    budget=st.sampled_from([0, 64, 1 << 20]),
    seed=st.integers(0, 2**32 - 1),
    behind=st.booleans(),
)
def test_spilled_blocks_read_back_as_put(
    puts: list[tuple[str, Any, list[int]]], budget: int, seed: int, behind: bool
) -> None:
    rng = np.random.default_rng(seed)
    kept: dict[str, list[np.ndarray]] = {}
    with _writing(behind), TensorStore(memory_budget=budget) as store:
        for name, dtype, shape in puts:
            block = np.asarray(rng.normal(size=shape) * 1000).astype(dtype)
            if block.ndim >= 2 and rng.integers(2):
                block = block.T  # a non-contiguous block
            store.put(name, block)
            kept.setdefault(name, []).append(block.copy())
            block[...] = 0  # the store owns a copy: the caller may reuse its buffer
        for name, blocks in kept.items():
            order = rng.permutation(len(blocks))
            for b in order:
                got = store.get(name, int(b))
                assert got.dtype == blocks[b].dtype
                np.testing.assert_array_equal(got, blocks[b])
        if budget == 0 and any(np.prod(s, dtype=int) for _, _, s in puts):
            assert store.spilled and store.spilled_bytes > 0
        first = next(iter(kept))
        store.drop(first)
        assert first not in store
        for name, blocks in kept.items():
            if name != first:
                np.testing.assert_array_equal(store.get(name, len(blocks) - 1), blocks[-1])


@pytest.fixture(params=[True, False], ids=["write-behind", "write-now"])
def write_behind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways of writing the spill file: by the helper thread, and at once."""
    monkeypatch.setattr(spill, "WRITE_BEHIND", request.param)
    return bool(request.param)


def test_freed_regions_are_overwritten_before_the_file_grows(write_behind: bool) -> None:
    store = TensorStore(memory_budget=0)
    store.put("x", np.arange(10, dtype=np.float64))  # 80 bytes at 0
    store.put("y", np.arange(10, dtype=np.float32))  # 40 at 80
    store.put("x", np.arange(5, dtype=np.float64))  # 40 at 120
    store.flush()
    assert store.spilled_bytes == 160
    assert store._tmp is not None  # the test looks at the file
    directory = store._tmp.name
    (name,) = os.listdir(directory)  # one growing file
    path = os.path.join(directory, name)
    assert os.path.getsize(path) == 160
    store.drop("x")
    np.testing.assert_array_equal(store.get("y", 0), np.arange(10, dtype=np.float32))
    # x's regions (80 at 0, 40 at 120) take the next blocks: z's 6 + 4 bytes, then 64 bytes
    store.put("z", np.full(3, 7, dtype=np.float16))
    store.put("z", np.full(2, -1, dtype=np.float16))
    store.put("a", np.arange(8, dtype=np.float64) + 0.5)
    store.put("b", np.arange(5, dtype=np.float64) - 0.5)
    store.flush()
    assert os.path.getsize(path) == 160
    # 6 bytes are left at 74: an 8-byte block grows the file
    store.put("c", np.array([3.25]))
    store.flush()
    assert os.path.getsize(path) == 168
    # a recycled block's region is free too, and the block cannot be read any more
    store.recycle("y", 0)
    with pytest.raises(FhequantError, match="recycled"):
        store.get("y", 0)
    store.put("d", np.arange(5, dtype=np.float64) * 3)
    store.flush()
    assert os.path.getsize(path) == 168
    np.testing.assert_array_equal(store.get("z", 0), np.full(3, 7))
    np.testing.assert_array_equal(store.get("z", 1), np.full(2, -1))
    np.testing.assert_array_equal(store.get("a", 0), np.arange(8) + 0.5)
    np.testing.assert_array_equal(store.get("b", 0), np.arange(5) - 0.5)
    np.testing.assert_array_equal(store.get("c", 0), [3.25])
    np.testing.assert_array_equal(store.get("d", 0), np.arange(5) * 3.0)
    store.close()
    assert not os.path.exists(directory)


def test_a_recycled_block_in_memory_frees_its_budget() -> None:
    store = TensorStore(memory_budget=100)
    store.put("x", np.arange(10, dtype=np.float64))  # 80 bytes, in memory
    store.put("x", np.arange(10, dtype=np.float64))  # does not fit: spilled
    assert store.spilled_bytes == 80
    store.recycle("x", 0)
    store.put("y", np.arange(10, dtype=np.float64))  # fits in memory now
    assert store.spilled_bytes == 80
    np.testing.assert_array_equal(store.get("x", 1), np.arange(10))
    np.testing.assert_array_equal(store.get("y", 0), np.arange(10))
    store.close()


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["put", "put", "put", "recycle", "drop"]),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(DTYPES),
            st.integers(0, 40),
        ),
        min_size=1,
        max_size=40,
    ),
    budget=st.sampled_from([0, 100, 1 << 20]),
    seed=st.integers(0, 2**32 - 1),
    behind=st.booleans(),
)
def test_blocks_read_back_as_put_whatever_is_recycled_or_dropped(
    steps: list[tuple[str, str, Any, int]], budget: int, seed: int, behind: bool
) -> None:
    rng = np.random.default_rng(seed)
    model: dict[str, list[np.ndarray | None]] = {}
    with _writing(behind), TensorStore(memory_budget=budget) as store:
        for action, name, dtype, size in steps:
            if action == "put":
                block = (rng.normal(size=size) * 50).astype(dtype)
                store.put(name, block)
                model.setdefault(name, []).append(block.copy())
            elif action == "recycle" and model.get(name):
                b = int(rng.integers(len(model[name])))
                store.recycle(name, b)
                model[name][b] = None
            elif action == "drop" and name in model:
                store.drop(name)
                del model[name]
            for key, blocks in model.items():
                for b, want in enumerate(blocks):
                    if want is not None:
                        got = store.get(key, b)
                        assert got.dtype == want.dtype
                        np.testing.assert_array_equal(got, want)


def test_blocks_wait_for_the_helper_within_the_pending_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(spill, "PENDING_BYTES", 1000)
    rng = np.random.default_rng(3)
    blocks = [rng.normal(size=int(n)).astype(np.float32) for n in rng.integers(1, 600, 40)]
    with _writing(True), TensorStore(memory_budget=0) as store:
        for block in blocks:
            store.put("x", block)
            assert store._file is not None
            # what waits is at most the bound, or the one block just handed over
            assert store._file._pending_bytes <= max(1000, block.nbytes)
            block[...] = -1  # the caller's buffer, filled again: the store wrote a copy
        assert store._file._pool is not None  # the helper thread made the writes
        for b in reversed(range(len(blocks))):
            assert np.all(store.get("x", b) != -1)
    assert store._file is None


def test_a_failed_write_is_reported_by_the_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: Any, offset: int) -> int:
        raise OSError(28, "No space left on device")

    with _writing(True), TensorStore(memory_budget=0) as store:
        monkeypatch.setattr(spill.os, "pwrite", full)
        store.put("x", np.arange(4, dtype=np.float64))
        with pytest.raises(OSError, match="No space left"):
            store.get("x", 0)
