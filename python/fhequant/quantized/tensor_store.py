"""The calibration walk's bounded block store (:class:`TensorStore`): the per-block values of
the tensors the walk still needs, in memory up to a byte budget and in a spill file beyond it
(docs/calibration-throughput.md, the streamed path and the ninth round).
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fhequant.errors import FhequantError
from fhequant.quantized.spill import SpillFile, delete_directory

#: Read the next spilled block of a tensor ahead of the pass that reads them in order.
READ_SPILL_AHEAD = True

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "READ_SPILL_AHEAD",
    "STORED_INTS",
    "TensorStore",
    "narrowest",
    "smallest_int",
]

#: Bytes of block data the store keeps in memory before spilling to disk when the memory this
#: process may use is unknown, and the least ``streaming.auto_memory_budget`` chooses.
DEFAULT_MEMORY_BUDGET = 32 * 1024 * 1024


@dataclass(frozen=True)
class _Spilled:
    """Where a spilled block lies: a file of the store and an offset in it (and the write
    that puts it there, while the helper thread may still be making it)."""

    file: SpillFile
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    written: Future[None] | None = None

    @property
    def span(self) -> int:
        """The bytes of the file the block takes (its own, rounded up to the file's
        alignment)."""
        return self.file.span(int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize)


@dataclass
class _Region:
    """Free bytes of a spill file (of a dropped tensor or a recycled block)."""

    file: SpillFile
    offset: int
    nbytes: int


@dataclass
class _Entry:
    blocks: list[Any] = field(default_factory=list)
    dtypes: list[np.dtype[Any]] = field(default_factory=list)
    #: bytes of this tensor's blocks charged to the memory budget
    charged: int = 0
    #: per block, whether it was charged (an owned block kept in memory)
    owned: list[bool] = field(default_factory=list)


class TensorStore:
    """Per-block values of tensors, in memory up to a budget, on disk beyond it.

    Integer blocks are narrowed to the smallest integer dtype that holds them and widened
    back on read, so stored quantized tensors take 1 or 2 bytes per value. Spilled blocks are
    written as raw bytes into spill files (opened once, read back with one ``readinto`` per
    block straight into the returned array, no header to parse). The bytes of a dropped
    tensor, and of a block its last reader recycled (:meth:`recycle`), are free regions that
    the next spilled blocks overwrite before any file grows: writing over pages the system
    already caches costs a fraction of allocating new ones. The files are deleted once,
    with the store.

    Args:
        memory_budget: bytes of (owned) block data kept in memory; more goes to disk.
    """

    def __init__(self, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.memory_budget = memory_budget
        self._in_memory = 0
        self._entries: dict[str, _Entry] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._files = 0
        self._spilled_bytes = 0
        #: the spill file (opened on the first spilled block) and its length
        self._file: SpillFile | None = None
        self._end = 0
        #: free regions of the files, overwritten first
        self._free: list[_Region] = []
        #: spilled blocks being read ahead, by (tensor, block index)
        self._ahead: dict[tuple[str, int], Future[np.ndarray]] = {}

    def __enter__(self) -> TensorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Forget every tensor and delete the spill directory."""
        self._ahead.clear()
        if self._file is not None:
            self._file.close()
        self._file = None
        self._free.clear()
        self._entries.clear()
        self._in_memory = 0
        if self._tmp is not None:
            delete_directory(self._tmp)
            self._tmp = None

    def flush(self) -> None:
        """Wait until every spilled block is written to its file (the writes are made by a
        helper thread, :mod:`fhequant.quantized.spill`; reads wait for their own block)."""
        if self._file is not None:
            self._file.flush()

    @property
    def spilled(self) -> bool:
        """True once some block went to disk."""
        return self._files > 0

    @property
    def spilled_bytes(self) -> int:
        """Bytes written to the spill files so far (each spilled block once)."""
        return self._spilled_bytes

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def n_blocks(self, name: str) -> int:
        """How many blocks tensor ``name`` has."""
        return len(self._entries[name].blocks)

    def put(
        self,
        name: str,
        block: np.ndarray,
        owned: bool = True,
        dtype: Any = None,
        bounds: tuple[int, int] | None = None,
        fresh: bool = False,
    ) -> None:
        """Append the next block of tensor ``name``.

        Args:
            name: the tensor name.
            block: the block's values.
            owned: False for a view of caller-held data (kept as is, never charged).
            dtype: the dtype of the values when ``block`` is a fresh integer array already
                narrowed from it (stored as is, read back in ``dtype``).
            bounds: the min and max of an integer ``block`` when the caller has them (they
                choose its stored dtype; computed here otherwise).
            fresh: ``block`` is a contiguous array no one else holds (kept as it is when it
                stays in memory, where an owned block is copied).
        """
        entry = self._entries.setdefault(name, _Entry())
        entry.dtypes.append(block.dtype if dtype is None else np.dtype(dtype))
        entry.owned.append(False)
        if not owned:
            entry.blocks.append(block)
            return
        if dtype is not None:
            stored = block
        elif block.dtype.kind in "iu" and block.size:
            stored = _narrow(block, bounds)
        elif fresh and block.flags.c_contiguous:
            stored = block  # no one else holds it: kept as it is
        else:
            stored = None  # copied below when kept in memory
        nbytes = block.nbytes if stored is None else stored.nbytes
        if self._in_memory + nbytes <= self.memory_budget:
            self._in_memory += nbytes
            entry.charged += nbytes
            entry.owned[-1] = True
            entry.blocks.append(np.array(block, copy=True) if stored is None else stored)
            return
        # to disk: the write is the copy (a float block of the caller's is copied only when
        # its write is left to the helper thread, :mod:`fhequant.quantized.spill`)
        entry.blocks.append(
            self._spill(block, owned=False) if stored is None else self._spill(stored, owned=True)
        )

    def _spill(self, block: np.ndarray, owned: bool) -> _Spilled:
        data = np.ascontiguousarray(block)
        owned = owned or not np.may_share_memory(data, block)  # a contiguous copy made here
        file, offset = self._place(data.nbytes)
        written = file.write(data, offset, owned)
        self._spilled_bytes += data.nbytes
        return _Spilled(file, offset, data.shape, data.dtype, written)

    def _place(self, nbytes: int) -> tuple[SpillFile, int]:
        """Where a block of ``nbytes`` goes: the first free region that holds its span (the
        region's rest stays free), else the end of the growing file."""
        if self._file is None:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="fhequant-calib-")
            path = os.path.join(self._tmp.name, f"{self._files}.bin")
            self._files += 1
            self._file = SpillFile(path)
            self._end = 0
        span = self._file.span(nbytes)
        for i, region in enumerate(self._free):
            if region.nbytes >= span:
                region.offset += span
                region.nbytes -= span
                if region.nbytes == 0:
                    del self._free[i]
                return region.file, region.offset - span
        self._end += span
        return self._file, self._end - span

    def recycle(self, name: str, index: int) -> None:
        """Block ``index`` of tensor ``name`` will not be read again: free its bytes (its
        memory charge, or its region of a spill file for the next spilled blocks). Reading
        it afterwards raises."""
        entry = self._entries[name]
        block = entry.blocks[index]
        self._ahead.pop((name, index), None)  # its region may be overwritten: not used
        if isinstance(block, _Spilled):
            self._release(block)
        elif entry.owned[index] and block is not None:
            entry.charged -= block.nbytes
            self._in_memory = max(self._in_memory - block.nbytes, 0)
            entry.owned[index] = False
        entry.blocks[index] = None

    def get(self, name: str, index: int) -> np.ndarray:
        """Block ``index`` of tensor ``name``, with its original dtype."""
        block = self.get_stored(name, index)
        dtype = self._entries[name].dtypes[index]
        return block if block.dtype == dtype else block.astype(dtype)

    def dtypes(self, name: str) -> list[np.dtype[Any]]:
        """The dtype each block of tensor ``name`` stands for (what :meth:`get` returns)."""
        return list(self._entries[name].dtypes)

    def holds(self, name: str, index: int, array: Any) -> bool:
        """Whether ``array`` is the in-memory block ``index`` of tensor ``name`` itself.

        Args:
            name: the tensor name.
            index: the block index.
            array: an array returned by :meth:`get` (or anything).

        Returns:
            True when ``array`` is the store's own block (callers must not keep it mutable).
        """
        return self._entries[name].blocks[index] is array

    def get_stored(self, name: str, index: int) -> np.ndarray:
        """Block ``index`` of tensor ``name`` as stored (integers possibly narrowed).

        Args:
            name: the tensor name.
            index: the block index.

        Returns:
            The stored values: the same numbers as :meth:`get`, maybe in a smaller dtype.
        """
        entry = self._entries[name]
        block = entry.blocks[index]
        if isinstance(block, _Spilled):
            ahead = self._ahead.pop((name, index), None)
            if READ_SPILL_AHEAD and index + 1 < len(entry.blocks):
                self._read_ahead(name, index + 1, entry.blocks[index + 1])
            if ahead is not None:
                return ahead.result()
            return block.file.read(block.shape, block.dtype, block.offset, block.written)
        if block is None:
            raise FhequantError(
                f"internal: block {index} of tensor {name!r} was recycled and then read"
            )
        return block

    def _read_ahead(self, name: str, index: int, block: Any) -> None:
        """Start reading spilled block ``index`` of ``name`` (the next one a pass reads) on
        the spill file's reading thread, unless it is in memory or already on its way."""
        if isinstance(block, _Spilled) and (name, index) not in self._ahead:
            self._ahead[(name, index)] = block.file.read_later(
                block.shape, block.dtype, block.offset, block.written
            )

    def drop(self, name: str) -> None:
        """Forget tensor ``name`` and free its blocks."""
        entry = self._entries.pop(name, None)
        if entry is None:
            return
        for key in [key for key in self._ahead if key[0] == name]:
            del self._ahead[key]  # its region may be overwritten: the read is not used
        for block in entry.blocks:
            if isinstance(block, _Spilled):
                self._release(block)
        self._in_memory = max(self._in_memory - entry.charged, 0)

    def _release(self, block: _Spilled) -> None:
        """The bytes of a spilled block are free: the next spills overwrite them."""
        if block.span:
            self._free.append(_Region(block.file, block.offset, block.span))


def narrowest(block: np.ndarray, bounds: tuple[int, int] | None = None) -> np.ndarray:
    """Integers in the smallest of :data:`STORED_INTS` that holds them (a new array), or
    ``block`` itself when it is empty, not integers, or no narrower dtype holds it
    (``bounds``: the block's min and max when the caller has them).

    Signed dtypes come first at each width: the native dequantize reads int8/16/32 blocks
    as they are stored, unsigned ones need a widening copy.
    """
    if block.dtype.kind not in "iu" or block.size == 0:
        return block
    lo, hi = (int(block.min()), int(block.max())) if bounds is None else bounds
    dtype = smallest_int(lo, hi, STORED_INTS)
    return block if dtype is None else block.astype(dtype)


def _narrow(block: np.ndarray, bounds: tuple[int, int] | None = None) -> np.ndarray:
    """:func:`narrowest`, always a copy (what the store keeps of a caller's block)."""
    narrowed = narrowest(block, bounds)
    return np.array(block, copy=True) if narrowed is block else narrowed


#: The stored dtypes of :func:`narrowest`, smallest first, signed first at each width.
STORED_INTS = tuple(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32))


def smallest_int(lo: int, hi: int, dtypes: tuple[np.dtype[Any], ...]) -> np.dtype[Any] | None:
    """The first of ``dtypes`` (integer dtypes) whose range holds [lo, hi], or None."""
    for dtype in dtypes:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    return None
