"""The calibration's TensorStore spill files (one raw file per tensor): blocks of several
tensors, dtypes and shapes interleaved, read back in any order, equal to what was put."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant.quantized.streaming import TensorStore

DTYPES = [np.float32, np.float64, np.int64, np.int16, np.bool_]


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
)
def test_spilled_blocks_read_back_as_put(
    puts: list[tuple[str, Any, list[int]]], budget: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    kept: dict[str, list[np.ndarray]] = {}
    with TensorStore(memory_budget=budget) as store:
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


def test_dropped_files_are_reused_and_close_removes_them() -> None:
    store = TensorStore(memory_budget=0)
    store.put("x", np.arange(10, dtype=np.float64))
    store.put("y", np.arange(10, dtype=np.float32))
    store.put("x", np.arange(5, dtype=np.float64))
    assert store.spilled_bytes == 80 + 40 + 40
    assert store._tmp is not None  # the test looks at the files
    directory = store._tmp.name
    assert len(os.listdir(directory)) == 2  # one file per tensor
    store.drop("x")
    np.testing.assert_array_equal(store.get("y", 0), np.arange(10, dtype=np.float32))
    # the next tensor that spills overwrites x's file (longer than what it writes): it reads
    # back its own bytes only, and no file is added
    store.put("z", np.full(3, 7, dtype=np.int16))
    store.put("z", np.full(2, -1, dtype=np.int16))
    assert len(os.listdir(directory)) == 2
    np.testing.assert_array_equal(store.get("z", 0), np.full(3, 7))
    np.testing.assert_array_equal(store.get("z", 1), np.full(2, -1))
    store.drop("y")
    store.drop("z")
    # two free files: two new tensors spill into them, a third opens a new file
    for name in ("a", "b", "c"):
        store.put(name, np.arange(4, dtype=np.float64) + ord(name))
    assert len(os.listdir(directory)) == 3
    for name in ("a", "b", "c"):
        np.testing.assert_array_equal(store.get(name, 0), np.arange(4) + ord(name))
    store.close()
    assert not os.path.exists(directory)
