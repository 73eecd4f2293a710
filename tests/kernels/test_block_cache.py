"""The block cache (``fhequant.kernels.memory``, issue 16): a numpy data allocator installed
for the calibration walk that keeps freed buffers of at least 1 MiB and hands them out again
for the same size. It must only change where the memory comes from: every array keeps its
own contents, the limit holds, the previous allocator comes back after the ``with`` block,
and a calibration gives the same module with and without buffers left from an earlier one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.core.multiarray import get_handler_name

from fhequant import _core, build_quantized_module
from fhequant.errors import ConfigurationError
from fhequant.kernels.memory import (
    block_cache,
    block_cache_limit,
    block_cache_stats,
    clear_block_cache,
)
from ptq_helpers import mlp

MIB = 1 << 20
NAME = "fhequant_block_cache"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Each test starts and ends with an empty cache and the default limit."""
    limit = block_cache_limit()
    clear_block_cache()
    try:
        yield
    finally:
        block_cache_limit(limit)
        clear_block_cache()


def test_installed_inside_the_block_only_and_nested() -> None:
    before = get_handler_name()
    assert before != NAME
    with block_cache():
        assert get_handler_name() == NAME
        with block_cache():
            assert get_handler_name() == NAME
        assert get_handler_name() == NAME
    assert get_handler_name() == before


def test_restored_after_an_error() -> None:
    before = get_handler_name()
    with pytest.raises(RuntimeError), block_cache():
        raise RuntimeError("inside")
    assert get_handler_name() == before


def test_a_freed_buffer_is_reused_for_the_same_size_only() -> None:
    with block_cache():
        a = np.empty(2 * MIB, np.int8)
        address = a.ctypes.data
        del a
        assert block_cache_stats().kept_bytes == 2 * MIB
        other = np.empty(3 * MIB, np.int8)  # another size: a new buffer
        assert other.ctypes.data != address
        b = np.empty(MIB, np.int16)  # the same byte size, another dtype and shape
        assert b.ctypes.data == address
        assert block_cache_stats().kept_bytes == 0
        small = np.empty(1000, np.int8)
        del small, other, b
    stats = block_cache_stats()
    assert stats.kept_buffers == 2 and stats.kept_bytes == 5 * MIB
    assert clear_block_cache() == 5 * MIB
    assert block_cache_stats().kept_bytes == 0


def test_arrays_made_inside_return_their_buffer_after_the_block() -> None:
    with block_cache():
        a = np.ones(MIB, np.float32)  # malloc, then filled
        a_zeros = np.zeros(MIB, np.float32)  # calloc: fresh zeroed memory, kept when freed
    assert get_handler_name(a) == NAME and get_handler_name(a_zeros) == NAME
    np.testing.assert_array_equal(a, 1.0)
    np.testing.assert_array_equal(a_zeros, 0.0)
    del a, a_zeros
    assert block_cache_stats().kept_bytes == 8 * MIB


def test_the_limit_bounds_what_is_kept() -> None:
    assert block_cache_limit(3 * MIB) == 3 * MIB
    with block_cache():
        arrays = [np.empty(2 * MIB, np.int8) for _ in range(3)]
        del arrays
    assert block_cache_stats().kept_bytes == 2 * MIB
    block_cache_limit(MIB)  # lowering it releases what is over
    assert block_cache_stats().kept_bytes == 0
    block_cache_limit(0)
    with block_cache():
        a = np.empty(2 * MIB, np.int8)
        del a
    assert block_cache_stats().kept_bytes == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True])
def test_bad_limits_are_refused(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="limit"):
        block_cache_limit(bad)


def test_exit_takes_only_a_handler() -> None:
    with pytest.raises(TypeError, match="block_cache_enter"):
        _core.block_cache_exit(object())


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 3, 8]), st.integers(0, 2**31 - 1), st.booleans()),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([0, 2, 6, 128]),
)
def test_every_array_keeps_its_contents(steps: list[tuple[int, int, bool]], limit: int) -> None:
    """Random allocations (sizes from under 1 MiB to 8 MiB) filled with their own values,
    some freed as they go: every live array still holds its values at the end, and the cache
    never holds more than its limit."""
    block_cache_limit(limit * MIB)
    live: list[tuple[np.ndarray, int]] = []
    with block_cache():
        for size, seed, free in steps:
            # int16 values: size MiB, or for size 1 sometimes a little less (not kept)
            n = size * MIB // 2 - (seed % 3) * (size == 1) * 100_000
            a = np.empty(n, np.int16)
            a[:] = seed % 30000
            live.append((a, seed % 30000))
            if free and live:
                live.pop(seed % len(live))
            assert block_cache_stats().kept_bytes <= limit * MIB
    for a, value in live:
        assert (a == value).all()


def test_threads_each_keep_their_own_arrays() -> None:
    errors: list[str] = []

    def work(k: int) -> None:
        with block_cache():
            for i in range(30):
                a = np.full(MIB, k * 1000 + i, np.int32)
                b = np.full(MIB // 2, -k, np.int64)
                if not ((a == k * 1000 + i).all() and (b == -k).all()):
                    errors.append(f"thread {k}, step {i}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert get_handler_name() != NAME


def test_calibration_reuses_buffers_and_gives_the_same_module() -> None:
    model = mlp([32, 96, 96, 8], seed=3)
    x = np.random.default_rng(0).normal(size=(12000, 32)).astype(np.float32)
    first = build_quantized_module(model, x, n_bits=6)
    hits = block_cache_stats().hits
    assert block_cache_stats().kept_bytes > 0, "the walk's block buffers were kept"
    second = build_quantized_module(model, x, n_bits=6)
    assert block_cache_stats().hits > hits, "the second walk took the kept buffers"
    assert get_handler_name() != NAME
    xq = x[:500]
    np.testing.assert_array_equal(
        first.quantized_forward(first.quantize_input(xq)),
        second.quantized_forward(second.quantize_input(xq)),
    )
    assert first.dumps() == second.dumps()
