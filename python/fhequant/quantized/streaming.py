"""Streaming building blocks of the calibration walk: row blocks and a bounded tensor store.

Calibration data comes as one array per input, a tuple of them, or any iterable of such
batches. :func:`iter_row_blocks` re-chunks whatever arrives into blocks of exactly
``block_rows`` rows anchored at row 0 (the last block may be shorter), so every op is always
evaluated on the same row blocks whatever the batch sizes of the source: float32 BLAS results,
which can depend on the shape of a matmul, are therefore independent of how the data is split.

:class:`~fhequant.quantized.tensor_store.TensorStore` (re-exported here) keeps the per-block
values of the tensors the walk still needs, in memory up to a byte budget (by default chosen
from the machine's memory, :func:`auto_memory_budget`) and in a spill file beyond it, so the
peak memory of a calibration does not grow with the number of rows.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from fhequant.errors import (
    ArgumentError,
    ConfigurationError,
    GraphInputError,
    ShapeError,
)
from fhequant.quantized.tensor_store import (
    DEFAULT_MEMORY_BUDGET,
    STORED_INTS,
    TensorStore,
    narrowest,
)

__all__ = [
    "AUTO_BLOCK_ROWS_RANGE",
    "AUTO_BLOCK_VALUES",
    "AUTO_MEMORY_BUDGET_MAX",
    "AUTO_MEMORY_SHARE",
    "DEFAULT_BLOCK_ROWS",
    "DEFAULT_MEMORY_BUDGET",
    "READ_AHEAD",
    "STORED_INTS",
    "TensorStore",
    "as_numpy",
    "auto_block_rows",
    "auto_memory_budget",
    "iter_fresh_row_blocks",
    "iter_row_blocks",
    "narrowest",
    "normalize_calibration_data",
    "read_ahead",
    "resolve_memory_budget",
    "usable_memory",
]

#: Rows per evaluation block when the caller does not choose and the model's tensor shapes
#: are unknown.
DEFAULT_BLOCK_ROWS = 4096
#: Values per row block of the widest tensor when the block size is chosen from the model
#: (:func:`auto_block_rows`): 2^21, 8 MiB of float32.
AUTO_BLOCK_VALUES = 1 << 21
#: The range of the block sizes :func:`auto_block_rows` chooses.
AUTO_BLOCK_ROWS_RANGE = (256, 16384)
#: The most :func:`auto_memory_budget` chooses: 256 MiB (the 1M-row benchmark's input fits;
#: past it, direct-I/O spill files read ahead cost less than new memory, twelfth round).
AUTO_MEMORY_BUDGET_MAX = 256 * 1024 * 1024
#: :func:`auto_memory_budget` keeps at most this share of the memory the process may use.
AUTO_MEMORY_SHARE = 1 / 16
#: The memory limit files of cgroup v2 and v1 (a container's limit, when lower than the RAM).
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def auto_block_rows(model: Any) -> int:
    """Rows per calibration block for ``model`` (an onnx.ModelProto): as many as keep one
    block of its widest tensor at :data:`AUTO_BLOCK_VALUES` values, within
    :data:`AUTO_BLOCK_ROWS_RANGE`; :data:`DEFAULT_BLOCK_ROWS` when ONNX shape inference gives
    no tensor a fully known row shape.

    Fewer, larger blocks cost less per row (each block is one round of Python dispatch per
    op and one native call per kernel), up to the point where a block no longer stays in
    the cache between the ops that read it. The block size never changes the results
    (calibration is split-independent), only the speed and the memory held per block.
    """
    widest = _widest_row(model)
    if widest is None:
        return DEFAULT_BLOCK_ROWS
    low, high = AUTO_BLOCK_ROWS_RANGE
    return max(low, min(high, AUTO_BLOCK_VALUES // widest))


def auto_memory_budget() -> int:
    """Bytes of calibration blocks kept in memory before spilling to disk when the caller does
    not choose (``memory_budget=None``): :data:`AUTO_MEMORY_SHARE` of the memory this process
    may use (the RAM, or the container's cgroup limit when lower), within
    [:data:`DEFAULT_MEMORY_BUDGET`, :data:`AUTO_MEMORY_BUDGET_MAX`];
    :data:`DEFAULT_MEMORY_BUDGET` when that memory is unknown.

    The budget never changes the results, only where the blocks wait between passes. Blocks
    spilled through the file cache cost about a fifth of a streamed calibration
    (docs/calibration-throughput.md, ninth round), so a machine with memory to spare keeps
    some; spill files opened for direct I/O and read ahead of the passes cost less than the
    new memory a larger budget touches (twelfth round: 1 GiB took 24 s at 10M rows where
    256 MiB and 32 MiB took 19-20 s), hence the ceiling. The peak memory does not grow with
    the rows beyond the budget.
    """
    usable = usable_memory()
    if usable is None:
        return DEFAULT_MEMORY_BUDGET
    share = int(usable * AUTO_MEMORY_SHARE)
    return max(DEFAULT_MEMORY_BUDGET, min(AUTO_MEMORY_BUDGET_MAX, share))


def usable_memory() -> int | None:
    """The bytes of memory this process may use: the physical RAM, or the cgroup's limit
    when one is set and lower; None when the system does not say."""
    try:
        usable: int | None = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        usable = None
    if usable is not None and usable <= 0:
        usable = None
    for path in _CGROUP_LIMITS:
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) > 0:
            usable = int(text) if usable is None else min(usable, int(text))
    return usable


def resolve_memory_budget(memory_budget: Any) -> int:
    """``memory_budget`` as given (bytes, an int >= 0), or :func:`auto_memory_budget` for
    None.

    Raises:
        ArgumentError: not an int (nor None).
        ConfigurationError: a negative int.
    """
    if memory_budget is None:
        return auto_memory_budget()
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int | np.integer):
        raise ArgumentError(
            f"memory_budget must be an int (bytes) or None (chosen from the machine's "
            f"memory), got {type(memory_budget).__name__}"
        )
    if memory_budget < 0:
        raise ConfigurationError(
            f"memory_budget must be >= 0 bytes (0 spills every block to disk), got {memory_budget}"
        )
    return int(memory_budget)


def _widest_row(model: Any) -> int | None:
    """The largest number of values per row (all axes but the first) of a graph input,
    output or intermediate tensor whose shape ONNX shape inference knows, or None."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, ValueError, TypeError, RuntimeError):
        return None  # the shapes are unknown: the caller keeps the default
    graph = inferred.graph
    widest: int | None = None
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if not info.type.HasField("tensor_type"):
            continue
        tensor = info.type.tensor_type
        if not tensor.HasField("shape") or len(tensor.shape.dim) < 2:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim[1:]]
        if all(d > 0 for d in dims):
            width = int(np.prod(dims, dtype=np.int64))
            widest = width if widest is None else max(widest, width)
    return widest


def as_numpy(value: Any, what: str = "calibration data") -> np.ndarray:
    """A numpy view of an array, a torch tensor or nested lists.

    Args:
        value: the data.
        what: what to name in error messages.

    Returns:
        The data as an ndarray (a view when possible; dtype kept).
    """
    if isinstance(value, np.ndarray):
        return value
    if _is_tensor(value):
        detach = getattr(value, "detach", None)
        if detach is not None:
            return np.asarray(detach().cpu().numpy())
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise GraphInputError(
            f"{what}: cannot convert a {type(value).__name__} to a numpy array; give numpy "
            "arrays or torch tensors"
        ) from exc


def _is_tensor(value: Any) -> bool:
    """A torch tensor (not any torch object: a DataLoader is an iterable of batches)."""
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _is_array_like(value: Any) -> bool:
    return isinstance(value, np.ndarray) or _is_tensor(value)


def _is_nested_rows(data: Any) -> bool:
    """Lists of lists of numbers (one input given as nested Python lists)."""
    if not isinstance(data, list) or not data or not isinstance(data[0], list):
        return False
    first = data[0]
    return bool(first) and isinstance(first[0], (int, float, list)) and not _is_array_like(first[0])


@dataclass
class CalibrationData:
    """Normalised calibration data.

    Attributes:
        arrays: the whole set, one array per input, when the data is in memory; else None.
        batches: an iterable of batches (each a tuple of arrays) when it is streamed.
    """

    arrays: tuple[np.ndarray, ...] | None = None
    batches: Iterable[Any] | None = None
    #: validates each batch (tuple of arrays, what to name) against the model's inputs
    check: Callable[[tuple[np.ndarray, ...], str], None] | None = None


def _batch_as_tuple(batch: Any) -> tuple[np.ndarray, ...]:
    if isinstance(batch, (tuple, list)):
        return tuple(as_numpy(b) for b in batch)
    return (as_numpy(batch),)


def normalize_calibration_data(data: Any) -> CalibrationData:
    """Classify calibration data: an in-memory whole set or an iterable of batches.

    * an ndarray or torch tensor: one input, the whole set;
    * a tuple of arrays/tensors: several inputs, the whole set;
    * any other iterable (list, generator, DataLoader-like): batches, each an array (one input)
      or a tuple/list of arrays (several inputs); a DataLoader's (x, y) batches are
      taken as x when the model has one input fewer than the batch has items;
    * lists of lists of numbers: one input, the whole set.

    Args:
        data: the calibration data.

    Returns:
        The classified data.
    """
    if isinstance(data, CalibrationData):
        return data
    if _is_array_like(data):
        return CalibrationData(arrays=(as_numpy(data),))
    if _is_nested_rows(data):
        return CalibrationData(arrays=(as_numpy(data),))
    if isinstance(data, tuple) and data and all(_is_array_like(d) for d in data):
        return CalibrationData(arrays=tuple(as_numpy(d) for d in data))
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise GraphInputError(
            f"calibration data must be an array, a torch tensor, a tuple of them (one per "
            f"input) or an iterable of such batches, got {type(data).__name__}"
        )
    return CalibrationData(batches=data)


def _check_batch(batch: tuple[np.ndarray, ...], n_inputs: int, index: int) -> int:
    if len(batch) != n_inputs:
        raise GraphInputError(
            f"calibration batch {index} has {len(batch)} input(s) but the model takes "
            f"{n_inputs}; give one array per model input"
        )
    rows = {a.shape[0] if a.ndim else -1 for a in batch}
    if len(rows) != 1 or -1 in rows:
        raise ShapeError(
            f"calibration batch {index}: the inputs must all have the same number of rows on "
            f"axis 0, got shapes {[a.shape for a in batch]}"
        )
    return rows.pop()


#: Read the next calibration batch from the source in a helper thread while the current one is
#: processed (:func:`read_ahead`); False reads them one after the other.
READ_AHEAD = True
#: Batches :func:`read_ahead` keeps on their way at most ...
READ_AHEAD_BATCHES = 3
#: ... while their bytes stay within this (one batch always; batches of unknown size: one).
READ_AHEAD_BYTES = 64 * 1024 * 1024


def read_ahead(batches: Iterable[Any]) -> Iterator[Any]:
    """The items of ``batches``, in order, read by one helper thread while the caller works
    on the ones before.

    A source that generates or loads its batches (numpy's random generators, file reads,
    a DataLoader's queue) mostly runs without the GIL, as do the numpy and native work the
    calibration does on a batch, so the two overlap on a second core. The source is iterated
    from ``iter()`` on the caller's thread, then advanced by the helper thread alone, one
    ``next()`` at a time, up to :data:`READ_AHEAD_BATCHES` batches ahead as long as that many
    batches of the last one's size fit in :data:`READ_AHEAD_BYTES` (one batch ahead
    otherwise): with one batch ahead the source waited whenever the caller's work on a block
    ran long, and the caller then waited for the source. An exception of the source is raised
    in the caller when it asks for that item; closing this generator early waits for the
    reads in flight, then stops.
    """
    iterator = iter(batches)
    end = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fhequant-read-ahead") as pool:
        pending = deque([pool.submit(next, iterator, end)])
        while True:
            item = pending.popleft().result()
            if item is end:
                return
            size = _nbytes(item)
            fit = 1 if size is None else READ_AHEAD_BYTES // max(size, 1)
            # past the end, next() gives `end` again at once
            while len(pending) < max(1, min(READ_AHEAD_BATCHES, fit)):
                pending.append(pool.submit(next, iterator, end))
            yield item


def _nbytes(item: Any) -> int | None:
    """The bytes of the arrays of a batch (an array, a tensor, or a tuple, list or dict of
    them), or None when some part has no known size."""
    if isinstance(item, (tuple, list)):
        parts = [_nbytes(part) for part in item]
    elif isinstance(item, dict):
        parts = [_nbytes(part) for part in item.values()]
    else:
        size = getattr(item, "nbytes", None)
        return size if isinstance(size, int) else None
    return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)


def iter_row_blocks(
    data: CalibrationData, n_inputs: int, block_rows: int
) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield the data as blocks of exactly ``block_rows`` rows (the last may be shorter).

    Args:
        data: normalised calibration data.
        n_inputs: the number of model inputs.
        block_rows: rows per block.

    Yields:
        One tuple of arrays (one per input) per block; in-memory data gives views.
    """
    for block, _ in iter_fresh_row_blocks(data, n_inputs, block_rows):
        yield block


def iter_fresh_row_blocks(
    data: CalibrationData, n_inputs: int, block_rows: int
) -> Iterator[tuple[tuple[np.ndarray, ...], bool]]:
    """:func:`iter_row_blocks`, each block with whether its arrays are fresh: made here by
    joining rows of several batches, so no one else holds them (the store may keep them as
    they are instead of copying them; a batch of the source may be a buffer its producer
    fills again)."""
    if data.arrays is not None:
        if data.check is not None:
            data.check(data.arrays, "calibration data")
        total = _check_batch(data.arrays, n_inputs, 0)
        for start in range(0, total, block_rows):
            yield tuple(a[start : start + block_rows] for a in data.arrays), False
        return
    assert data.batches is not None
    pending: list[tuple[np.ndarray, ...]] = []
    pending_rows = 0
    batches = read_ahead(data.batches) if READ_AHEAD else data.batches
    for index, raw_batch in enumerate(batches):
        batch = _batch_as_tuple(raw_batch)
        if len(batch) == n_inputs + 1 and isinstance(raw_batch, (tuple, list)):
            batch = batch[:n_inputs]  # (x, y) batches of a DataLoader: the labels are dropped
        if data.check is not None:
            data.check(batch, f"calibration batch {index}")
        rows = _check_batch(batch, n_inputs, index)
        if rows == 0:
            continue
        pending.append(batch)
        pending_rows += rows
        while pending_rows >= block_rows:
            block, pending, pending_rows, fresh = _take_rows(pending, block_rows)
            yield block, fresh
    if pending_rows:
        block, _, _, fresh = _take_rows(pending, pending_rows)
        yield block, fresh


def _take_rows(
    pending: list[tuple[np.ndarray, ...]], rows: int
) -> tuple[tuple[np.ndarray, ...], list[tuple[np.ndarray, ...]], int, bool]:
    """Split ``rows`` rows off the front of the pending batches: the block, the batches
    left, their rows, and whether the block's arrays were joined here (fresh)."""
    taken: list[tuple[np.ndarray, ...]] = []
    need = rows
    rest = list(pending)
    while need:
        head = rest[0]
        n = head[0].shape[0]
        if n <= need:
            taken.append(head)
            rest.pop(0)
            need -= n
        else:
            taken.append(tuple(a[:need] for a in head))
            rest[0] = tuple(a[need:] for a in head)
            need = 0
    if len(taken) == 1:
        block = taken[0]
    else:
        try:
            block = tuple(
                np.concatenate([t[i] for t in taken], axis=0) for i in range(len(taken[0]))
            )
        except ValueError as exc:
            raise ShapeError(
                "calibration batches must agree on every axis but the first (rows); got "
                f"shapes {[t[0].shape for t in taken]}"
            ) from exc
    left = sum(t[0].shape[0] for t in rest)
    return block, rest, left, len(taken) > 1
