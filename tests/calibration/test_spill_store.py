"""The calibration's TensorStore spill files (raw bytes, freed regions overwritten first):
blocks of several tensors, dtypes and shapes interleaved, recycled and dropped, read back in
any order, equal to what was put."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant.errors import FhequantError
from fhequant.quantized import spill, tensor_store
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


def test_freed_regions_are_overwritten_before_the_file_grows(
    write_behind: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spill, "DIRECT", False)  # a cached file: blocks take their own bytes
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
    spill.wait_deletions()
    assert not os.path.exists(directory)


@pytest.mark.parametrize("behind", [True, False])
def test_the_spill_directory_is_deleted_after_close(
    behind: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleted by a helper thread (the caller does not wait for the file system to free a
    large file) or at once; either way it is gone once :func:`spill.wait_deletions`
    returns, and with the switch off it is gone when ``close`` returns."""
    monkeypatch.setattr(spill, "DELETE_BEHIND", behind)
    started: list[str] = []
    real = spill._delete

    def delete(directory: Any) -> None:
        started.append(threading.current_thread().name)
        real(directory)

    monkeypatch.setattr(spill, "_delete", delete)
    store = TensorStore(memory_budget=0)
    store.put("x", np.arange(1000, dtype=np.float64))
    assert store._tmp is not None
    directory = store._tmp.name
    store.close()
    if not behind:
        assert not os.path.exists(directory)
    spill.wait_deletions()
    assert not os.path.exists(directory)
    assert started == (["fhequant-spill-delete"] if behind else [threading.current_thread().name])


def test_a_directory_that_cannot_be_deleted_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stuck:
        name = "/nowhere/fhequant-calib-x"

        def cleanup(self) -> None:
            raise PermissionError("read-only file system")

    with pytest.warns(RuntimeWarning, match="fhequant-calib-x.*read-only"):
        spill._delete(Stuck())  # type: ignore[arg-type]


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


def test_direct_io_blocks_take_aligned_spans(write_behind: bool) -> None:
    """With direct I/O (where the file system takes it) every block starts at a multiple of
    the file's alignment and takes its bytes rounded up to it; a freed span is reused."""
    with TensorStore(memory_budget=0) as store:
        store.put("x", np.arange(10, dtype=np.float64))
        assert store._file is not None
        file = store._file
        align = file.align
        assert align in (1, spill.ALIGN)
        assert file.direct == (align > 1)
        blocks = [np.arange(n, dtype=np.float32) - 3 for n in (1, 1024, 1025, 3000)]
        for block in blocks:
            store.put("y", block)
        store.flush()
        spans = [file.span(80)] + [file.span(b.nbytes) for b in blocks]
        assert all(span % align == 0 and span >= 4 for span in spans)
        assert os.path.getsize(file.name) == sum(spans)
        offsets = [b.offset for b in store._entries["y"].blocks]
        assert all(offset % align == 0 for offset in offsets)
        store.drop("x")
        store.put("z", np.arange(20, dtype=np.float32))  # into x's freed span
        store.flush()
        assert os.path.getsize(file.name) == sum(spans)
        np.testing.assert_array_equal(store.get("z", 0), np.arange(20, dtype=np.float32))
        for b, block in enumerate(blocks):
            np.testing.assert_array_equal(store.get("y", b), block)


def test_a_file_system_without_direct_io_gets_a_cached_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    real_open = os.open

    def refuse_direct(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(22, "Invalid argument")  # what tmpfs answers
        return real_open(path, flags, mode)

    monkeypatch.setattr(spill.os, "open", refuse_direct)
    file = spill.SpillFile(str(tmp_path / "s.bin"))
    try:
        assert not file.direct and file.span(5) == 5
        block = np.arange(5, dtype=np.int8)
        file.write(block, 0, owned=False)
        file.flush()
        np.testing.assert_array_equal(file.read((5,), np.dtype(np.int8), 0, None), block)
    finally:
        file.close()


def test_direct_writes_reuse_their_staging_buffers(tmp_path: Any) -> None:
    file = spill.SpillFile(str(tmp_path / "s.bin"))
    try:
        blocks = [np.full(50_000, i, dtype=np.float32) for i in range(40)]
        for i, block in enumerate(blocks):
            file.write(block, i * file.span(block.nbytes), owned=True)
        file.flush()
        if file.direct:  # staging buffers come back after their writes and are reused
            assert 0 < len(file._buffers) <= 16
            assert all(b.ctypes.data % file.align == 0 for b in file._buffers)
        for i, block in enumerate(blocks):
            got = file.read(block.shape, block.dtype, i * file.span(block.nbytes), None)
            np.testing.assert_array_equal(got, block)
    finally:
        file.close()


def test_reading_a_spilled_block_reads_the_next_one_ahead(write_behind: bool) -> None:
    rng = np.random.default_rng(11)
    blocks = [rng.normal(size=(n, 3)).astype(np.float32) for n in (5, 7, 2, 9)]
    with TensorStore(memory_budget=0) as store:
        for block in blocks:
            store.put("x", block)
        np.testing.assert_array_equal(store.get("x", 0), blocks[0])
        assert set(store._ahead) == {("x", 1)}  # block 1 on its way
        np.testing.assert_array_equal(store.get("x", 1), blocks[1])
        assert set(store._ahead) == {("x", 2)}
        # block 2 is recycled while read ahead and its span taken by another tensor: the
        # read-ahead result is dropped, nothing else changes
        store.recycle("x", 2)
        assert not store._ahead
        store.put("y", np.full((2, 3), 9.0, dtype=np.float32))
        np.testing.assert_array_equal(store.get("x", 3), blocks[3])
        np.testing.assert_array_equal(store.get("y", 0), np.full((2, 3), 9.0))
        np.testing.assert_array_equal(store.get("x", 0), blocks[0])
        store.drop("x")
        assert not any(key[0] == "x" for key in store._ahead)


def test_without_read_ahead_nothing_is_read_early(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensor_store, "READ_SPILL_AHEAD", False)
    with TensorStore(memory_budget=0) as store:
        for n in (3, 4):
            store.put("x", np.arange(n, dtype=np.int64) * 1000)
        np.testing.assert_array_equal(store.get("x", 0), np.arange(3) * 1000)
        assert not store._ahead
