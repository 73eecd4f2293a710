"""The worker side of a distributed calibration: one partition of rows and its passes.

A :class:`Partition` holds, for a range of whole calibration blocks, the stored blocks of the
walk tensors still needed (graph inputs, quantized op outputs) and lives on a Dask worker as
the result of a task. Every pass is a pure function of a partition and a pickled *payload*
(the op as calibrated so far, the client's metadata of the tensors it reads): it returns a
small partial statistic for the client to merge (:mod:`fhequant.distributed.merge`) and, for
output passes, a **new** partition holding the op's output. Nothing is modified in place, so
Dask can re-run any pass from its lineage when a worker dies.

The per-block work is the local walk's own code (:class:`~fhequant.quantized.calibration.store.
WalkStore`, :class:`~fhequant.quantized.calibration.passes.OpPasses`, ``fused_statistics``,
the executor's ``RoundingRangeObserver``) run on a ``WalkStore`` built over the partition's
blocks, so each block gives the numbers it gives locally.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fhequant import _core
from fhequant.distributed.merge import Extremes, RoundingRange, TensorRanges
from fhequant.quantization import QuantizedArray
from fhequant.quantized.calibration.engine import OutputRange
from fhequant.quantized.calibration.passes import OpPasses
from fhequant.quantized.calibration.store import Progress, WalkStore, WalkTensor
from fhequant.quantized.calibration.tables import TablePaths
from fhequant.quantized.exec import ClearBackend, Executor, RoundingRangeObserver, use_executor
from fhequant.quantized.finite import check_finite
from fhequant.quantized.fused_stats import fused_statistics
from fhequant.quantized.graph import use_split_independent_impl

__all__ = ["OutputPartial", "Partition"]


@dataclass(frozen=True)
class Partition:
    """Whole calibration blocks of one partition and the stored blocks of its tensors.

    Attributes:
        index: the partition's position (partials merge in this order).
        block_sizes: rows of each block.
        blocks: per tensor, its stored blocks (integers possibly narrowed).
        dtypes: per tensor, the dtype each block stands for.
        partial: the partial statistic of the pass that made this partition.
    """

    index: int
    block_sizes: tuple[int, ...]
    blocks: dict[str, list[np.ndarray]] = field(default_factory=dict)
    dtypes: dict[str, list[np.dtype[Any]]] = field(default_factory=dict)
    partial: Any = None

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for blocks in self.blocks.values() for b in blocks)


def partial_of(part: Partition) -> Any:
    """The partial statistic a pass left on its partition (a small task result)."""
    return part.partial


def _walk_store(part: Partition, meta: dict[str, WalkTensor], flows_raw: bool) -> WalkStore:
    """A WalkStore over the partition's blocks (never spilling: Dask manages worker memory)."""
    store = WalkStore(sys.maxsize, flows_raw)
    store.tensors.update(meta)
    store.block_sizes = list(part.block_sizes)
    store.progress = Progress(0, False)
    for name, blocks in part.blocks.items():
        store.adopt_blocks(name, blocks, part.dtypes[name])
    return store


# --- loading ------------------------------------------------------------------------------


@dataclass
class LoadPartial:
    """Rows and per-input extremes of one partition."""

    block_sizes: tuple[int, ...]
    extremes: list[Extremes]


def load_partition(
    index: int,
    arrays: tuple[np.ndarray, ...],
    names: tuple[str, ...],
    block_rows: int,
    check: Callable[[tuple[np.ndarray, ...], str], None] | None,
    preprocess: Callable[..., tuple[np.ndarray, ...]] | None,
) -> Partition:
    """Cut the partition's rows into blocks of ``block_rows`` and keep them as graph inputs.

    The partition starts on a block boundary of the local walk, so its blocks are the local
    walk's; the extremes are folded per block as ``ModuleCalibrator._load_inputs`` does.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    if check is not None:
        check(arrays, f"calibration partition {index}")
    total = arrays[0].shape[0]
    sizes: list[int] = []
    blocks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    dtypes: dict[str, list[np.dtype[Any]]] = {name: [] for name in names}
    extremes = [Extremes() for _ in names]
    for start in range(0, total, block_rows):
        block = tuple(a[start : start + block_rows] for a in arrays)
        if preprocess is not None:
            block = preprocess(*block)
        sizes.append(block[0].shape[0])
        for i, (name, arr) in enumerate(zip(names, block, strict=True)):
            if arr.size:
                lo, hi = arr.min(), arr.max()
                check_finite(lo, hi, name, "calibration data")
                e = extremes[i]
                extremes[i] = Extremes(
                    lo if e.lo is None else np.minimum(e.lo, lo),
                    hi if e.hi is None else np.maximum(e.hi, hi),
                    arr.dtype,
                )
            blocks[name].append(arr)
            dtypes[name].append(arr.dtype)
    return Partition(index, tuple(sizes), blocks, dtypes, LoadPartial(tuple(sizes), extremes))


# --- payloads -----------------------------------------------------------------------------


@dataclass
class OpPayload:
    """What a pass needs of the client's walk (pickled once per pass, unpickled per task so
    that no task sees another's copy of the op)."""

    op: Any
    variable: list[str]
    out: str
    meta: dict[str, WalkTensor]
    input_stats: dict[str, tuple[Any, Any]]
    flows_raw: bool
    total_rows: int = 0
    drops: tuple[str, ...] = ()
    rounding: bool = False
    table: tuple[int, np.ndarray, int, int] | None = None  # (lo, table, qlo, qhi)

    def dumps(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)


def _payload(data: bytes) -> OpPayload:
    loaded = pickle.loads(data)
    assert isinstance(loaded, OpPayload)
    return loaded


# --- statistics ---------------------------------------------------------------------------


def statistics_pass(part: Partition, payload: bytes) -> OutputRange:
    """The op's output range over the partition's blocks (``OpPasses.statistics``: the fused
    native kernels when they apply)."""
    p = _payload(payload)
    op = p.op
    store = _walk_store(part, p.meta, p.flows_raw)
    stat = OutputRange(op, p.out, p.total_rows, p.flows_raw)
    with use_split_independent_impl(op):
        if not p.flows_raw and not stat.clips:
            fused = fused_statistics(store, op, p.variable, p.out)
            if fused is not None:
                stat.fold_extremes(fused[0], fused[1], fused.dtype)
                return stat
        for b in range(store.n_blocks):
            stat.update(op, [store.float_block(n, b) for n in p.variable])
    return stat


def gather_floats(part: Partition, payload: bytes) -> list[list[Any]]:
    """The float input blocks of an op whose calibration needs whole tensors."""
    p = _payload(payload)
    store = _walk_store(part, p.meta, p.flows_raw)
    return [[store.float_block(n, b) for b in range(store.n_blocks)] for n in p.variable]


# --- outputs ------------------------------------------------------------------------------


@dataclass
class OutputPartial:
    """An output pass of one partition: the rounding range it saw, what the output tensor
    became, and the quantizer of its last block's result (``traits.finish``)."""

    rounding: RoundingRange
    kind: str
    quantizer: Any
    stored_floats: bool
    ranges: TensorRanges
    last_quantizer: Any = None


def _next_partition(part: Partition, store: WalkStore, p: OpPayload, partial: Any) -> Partition:
    blocks = {n: v for n, v in part.blocks.items() if n not in p.drops}
    dtypes = {n: v for n, v in part.dtypes.items() if n not in p.drops}
    if store.has_blocks(p.out):
        blocks[p.out], dtypes[p.out] = store.stored_blocks(p.out)
    return replace(part, blocks=blocks, dtypes=dtypes, partial=partial)


def _output_partial(store: WalkStore, p: OpPayload, rounding: RoundingRange, last: Any) -> Any:
    tensor = store.tensors[p.out]
    return OutputPartial(
        rounding,
        tensor.kind,
        tensor.quantizer,
        tensor.stored_floats,
        TensorRanges(tensor.vmin, tensor.vmax, tensor.qmin, tensor.qmax),
        last.quantizer if isinstance(last, QuantizedArray) else None,
    )


def output_pass(part: Partition, payload: bytes) -> Partition:
    """``q_impl`` on every block with the op's current rounding (the first uncalibrated
    rounding point observed), keeping the output for the consumers."""
    p = _payload(payload)
    op = p.op
    store = _walk_store(part, p.meta, p.flows_raw)
    passes = OpPasses(store, TablePaths(store, p.flows_raw), p.flows_raw, p.input_stats)
    recorder = RoundingRangeObserver(op) if p.rounding else None
    scope = (
        use_executor(Executor(ClearBackend(), recorder))
        if recorder is not None
        else contextlib.nullcontext()
    )
    last: Any = None
    with use_split_independent_impl(op), scope:
        for b in range(store.n_blocks):
            qas = [passes.calibration_qa(n, b, op) for n in p.variable]
            last = op.q_impl(*qas)
            store.store_output(p.out, b, last, None)
    seen = (
        RoundingRange(recorder.pending, recorder.lo, recorder.hi)
        if recorder is not None
        else RoundingRange()
    )
    return _next_partition(part, store, p, _output_partial(store, p, seen, last))


def table_presence(part: Partition, payload: bytes) -> np.ndarray:
    """Which integers of the input's range occur in this partition (the table path)."""
    p = _payload(payload)
    store = _walk_store(part, p.meta, p.flows_raw)
    tensor = store.tensors[p.variable[0]]
    assert tensor.qmin is not None and tensor.qmax is not None
    lo, size = tensor.qmin, tensor.qmax - tensor.qmin + 1
    seen = np.zeros(size, dtype=bool)
    for b in range(store.n_blocks):
        block = store.table_index_block(p.variable[0], b)
        if block.size:
            seen |= _core.int_presence(block, lo, size)
    return seen


def table_output(part: Partition, payload: bytes) -> Partition:
    """The output integers of an element-wise op read from its table."""
    p = _payload(payload)
    assert p.table is not None
    lo, table, qlo, qhi = p.table
    store = _walk_store(part, p.meta, p.flows_raw)
    name = p.variable[0]
    for b in range(store.n_blocks):
        if store.tensors[p.out].consumers_left <= 0:
            continue
        block = store.table_index_block(name, b)
        ints = _core.int_lookup(block, lo, table) if block.size else block.astype(np.int64)
        store.store_ints(p.out, ints, qlo, qhi, np.int64 if ints.dtype != np.int64 else None)
    return _next_partition(part, store, p, _output_partial(store, p, RoundingRange(), None))
