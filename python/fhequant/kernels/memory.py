"""Reuse of block-sized buffers across calibration passes and calls.

Calibration allocates the same block-sized numpy arrays again and again and frees them all at
its end; the C allocator then returns their pages to the system, and the next calibration in
the process pays a page fault per page again. :func:`block_cache` installs, for the current
context only, a numpy data allocator (NEP 49) from the native core that keeps freed buffers
of at least 1 MiB, up to a byte limit (128 MiB by default), and hands them out again for
allocations of the same size (docs/calibration-throughput.md, the tenth round). Arrays keep
the allocator they were made with, so buffers of arrays that outlive the context still
return to the cache; :func:`clear_block_cache` gives the kept buffers back and
:func:`block_cache_limit` changes the limit (0 keeps nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from fhequant import _core
from fhequant.errors import ConfigurationError

__all__ = [
    "BlockCacheStats",
    "block_cache",
    "block_cache_limit",
    "block_cache_stats",
    "clear_block_cache",
]


class BlockCacheStats(NamedTuple):
    """What the block cache holds and did (hits and misses count allocations of at least
    1 MiB made through it since the process started)."""

    kept_bytes: int
    kept_buffers: int
    hits: int
    misses: int


@contextmanager
def block_cache() -> Iterator[None]:
    """numpy allocates array data through the block cache inside the ``with`` block (in the
    current thread's context; nested uses are fine)."""
    previous = _core.block_cache_enter()
    try:
        yield
    finally:
        _core.block_cache_exit(previous)


def block_cache_limit(limit: int | None = None) -> int:
    """The limit on the bytes the cache keeps; set it when ``limit`` is given (what is over
    it is released at once)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigurationError(
            f"block_cache_limit: limit must be a non-negative int (bytes), got {limit!r}"
        )
    return int(_core.block_cache_limit(limit))


def block_cache_stats() -> BlockCacheStats:
    """The cache's current contents and counters."""
    return BlockCacheStats(*_core.block_cache_stats())


def clear_block_cache() -> int:
    """Give every kept buffer back to numpy's default allocator; returns the bytes released."""
    return int(_core.block_cache_clear())
