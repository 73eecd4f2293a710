"""Statistics gathered one op ahead (docs/calibration-throughput.md, thirteenth round of
issue 16).

The statistics of a Gemm, MatMul or Conv are the min and max of its float result on the
float values of its input. When that input is the output of the op the walk calibrates now
(the producer), read directly or through one monotone element-wise op calibrated by table
(a Relu), the walk gathers them during the producer's output pass, each block as soon as the
producer's integers are stored, instead of reading every stored block again in a pass of
their own (on a streamed calibration, from the spill file).

What the consumer's kernel reads depends on one thing the producer's pass decides: the
integer range its blocks span, from which the table op takes its quantizer (its float
results at the two ends). The walk guesses that range before the pass: the producer's whole
clip range, which a hidden op's integers reach at the ends that matter almost always (the
output quantizer comes from the float result's extremes). On that guess it builds the table
op and the consumer (:class:`Guess`) and feeds the consumer's extremes kernel
(:class:`~fhequant.quantized.fused_stats.Extremes`) every stored block.

When the walk reaches the consumer, :meth:`StatisticsAhead.take` hands the result over only if
the kernel read exactly what the consumer's own pass would read: the same stored integers
(every block, in order), the same table on every integer the blocks can hold, the same scale
and zero point, the same weights, bias and attributes. Otherwise the consumer's own pass runs
as before. Either way the numbers are the pass's, bit for bit.

With :data:`CONCURRENT`, a guess on a Gemm/MatMul served by the integer filter hands its
blocks to ``_core.AccExtremesStream``, which reduces them (table lookup included) on a
native thread that never takes the GIL, in order, while the walk computes the producer's
next block; the guess collects the result when the producer's pass is over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fhequant import _core
from fhequant.quantized import fused_stats
from fhequant.quantized.calibration.store import (
    TABLE_INDEX,
    TABLE_MAX_SIZE,
    WalkStore,
    WalkTensor,
    native_dequant_params,
)
from fhequant.quantized.calibration.tables import element_table
from fhequant.quantized.calibration.views import TableView
from fhequant.quantized.graph import quantized_registry, use_split_independent_impl
from fhequant.quantized.tensor_store import narrowest

__all__ = [
    "CONCURRENT",
    "ENABLED",
    "MIN_ROWS",
    "PENDING_BLOCKS",
    "Guess",
    "StatisticsAhead",
    "build_guess",
    "guess_for",
]

#: Gather a consumer's statistics during its producer's output pass when the graph allows
#: it. Set to False to always run the consumer's own statistics pass (same numbers; tests
#: compare).
ENABLED = True
#: Guess only on calibrations of at least this many rows: a guess costs a fixed 1-3 ms (the
#: table op and the consumer built twice, a table, the consumer's plan), which only pays
#: once its pass over the rows is dearer (thirteenth round: 0.9x the time on the benchmark's
#: 10k- and 100k-row in-memory rows, 1.04x faster at 1M rows, 1.10x at 10M).
MIN_ROWS = 1 << 18
#: Reduce a guess's blocks on a native thread of its own (``_core.AccExtremesStream``)
#: while the walk computes the producer's next block, when the consumer is a Gemm/MatMul
#: served by the integer filter; the blocks are taken in order, so the numbers are the
#: same. Set to False to reduce them on the walk's thread (docs/calibration-throughput.md,
#: fifteenth round).
CONCURRENT = True
#: Blocks handed to that thread and not yet reduced, at most (each keeps the producer's
#: integers alive until it is reduced).
PENDING_BLOCKS = 2
#: The stored integer dtypes the native thread reads (blocks and tables).
_STREAMED = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32))


class _RefusedError(Exception):
    """A block the guess cannot take as the consumer's own pass would (it stops guessing)."""


def _refuse() -> np.ndarray:
    raise _RefusedError("the block needs the materialised path")


@dataclass
class Guess:
    """The statistics of one consumer, gathered on a guess of its input.

    Attributes:
        source: the producer's output, whose stored blocks are fed.
        read: the tensor the consumer reads (the table op's output, or ``source``).
        out: the consumer's output.
        lo: the integer of ``source`` that ``table[0]`` maps.
        table: the table op's output integers over ``source``'s clip range (None: the
            consumer reads ``source`` itself).
        dequant: the float64 (scale, zero point) of ``read``.
        extremes: the consumer's running min/max.
        plan: the consumer's constant operands as its kernels read them (compared at take).
        stream: the native reduction of the blocks (:data:`CONCURRENT`), once the first
            block with values chose it; None otherwise.
    """

    source: str
    read: str
    out: str
    lo: int
    table: np.ndarray | None
    dequant: tuple[float, float]
    extremes: fused_stats.Extremes
    plan: tuple[Any, ...]
    fed: int = 0
    stream: Any = None
    streaming: bool | None = None

    def add(self, b: int, ints: np.ndarray) -> None:
        """Feed block ``b`` of ``source`` (its integers as handed to the store).

        Raises:
            _RefusedError: a block out of order, or one the kernels do not take as stored.
        """
        if b != self.fed:
            raise _RefusedError(f"block {b} after {self.fed} blocks")
        self.fed += 1
        if not ints.size:
            return  # the consumer's pass finds no value in it either
        if self.streaming is None:
            self.streaming = self._start_stream(ints)
        if self.streaming:
            if not self._streams(ints):
                raise _RefusedError("the block is not read as stored integers")
            self.stream.push(ints.reshape(-1, ints.shape[-1]))
            return
        # the block as the consumer's pass reads it: the stored integers (narrowed as the
        # store narrows them), or the view of them through the table
        if self.table is None:
            x = ints if fused_stats.reads_stored(ints) else narrowest(ints)
        else:
            index = ints if ints.dtype in TABLE_INDEX else ints.astype(np.int64)
            x = TableView(self.source, self.lo, self.table).stored(np.ascontiguousarray(index))
        if not x.ndim or not fused_stats.reads_stored(x):
            raise _RefusedError("the block is not read as stored integers")
        with use_split_independent_impl(self.extremes.op):
            self.extremes.add(x, self.dequant, b, _refuse)

    def _streams(self, ints: np.ndarray) -> bool:
        """Whether the native thread reads block ``ints`` as the consumer's pass would."""
        integers = self.extremes.plan.integers
        return (
            integers is not None
            and ints.dtype in _STREAMED
            and ints.ndim >= 2
            and ints.shape[-1] == integers[0].shape[0]
            and ints.flags.c_contiguous
        )

    def _start_stream(self, ints: np.ndarray) -> bool:
        """Start the native reduction when the consumer is served by the integer filter
        (its weights as integers), the table and the first block are stored integers it
        reads, and :data:`CONCURRENT`; returns whether it started."""
        plan = self.extremes.plan
        if not CONCURRENT or plan.kind != "matmul" or plan.weight64 is None:
            return False
        if self.extremes.products is not None or not self._streams(ints):
            return False
        if self.table is not None and self.table.dtype not in _STREAMED:
            return False
        assert plan.integers is not None  # _streams checked it
        wq, z_w = plan.integers
        self.stream = _core.AccExtremesStream(
            None if self.table is None else np.ascontiguousarray(self.table),
            self.lo,
            wq,
            z_w,
            plan.weight64,
            plan.bias64,
            *self.dequant,
            fused_stats.EXACT_EXTREMES,
            fused_stats.LOOSE_SURVIVORS,
            max(PENDING_BLOCKS, 1),
        )
        return True

    def collect(self) -> bool:
        """Wait for the native reduction (if any) and keep its result; False when it
        stopped on a block the consumer's own pass must take."""
        stream, self.stream = self.stream, None
        if stream is None:
            return True
        found, refused, _ = stream.finish()
        if refused is not None:
            return False
        if found is not None:
            self.extremes.merge(np.float64(found[0]), np.float64(found[1]), np.dtype(np.float64))
        return True

    def matches(self, op: Any, variable: list[str], store: WalkStore) -> bool:
        """Whether the consumer ``op`` (variable inputs ``variable``) reads in its own pass
        exactly what this guess fed its kernel."""
        if variable != [self.read] or self.fed != store.n_blocks:
            return False
        tensor = store.tensors.get(self.read)
        source = store.tensors.get(self.source)
        if tensor is None or source is None or source.qmin is None or source.qmax is None:
            return False
        q = tensor.quantizer
        if tensor.kind != "quant" or tensor.stored_floats or q is None:
            return False
        if not native_dequant_params(q) or fused_stats.dequant_pair(q) != self.dequant:
            return False
        view = store.views.get(self.read)
        if self.table is None:
            if view is not None or self.read != self.source:
                return False
        else:
            if view is None or view.base != self.source or view.lo != source.qmin:
                return False
            start = view.lo - self.lo
            if start < 0 or start + view.table.size > self.table.size:
                return False
            if view.table.dtype != self.table.dtype:
                return False
            if not np.array_equal(view.table, self.table[start : start + view.table.size]):
                return False
        real = fused_stats.Extremes.of(op, variable, self.out)
        return real is not None and same_plan(plan_key(real.plan), self.plan)


def plan_key(plan: Any) -> tuple[Any, ...]:
    """The parts of an extremes plan its kernels read (to compare two plans)."""
    integers = plan.integers
    return (
        plan.kind,
        plan.weight,
        plan.bias,
        repr(sorted(plan.attrs.items())),
        None if integers is None else integers[0],
        None if integers is None else integers[1],
    )


def same_plan(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Whether two :func:`plan_key` tuples are equal, arrays by dtype, shape and values."""
    for x, y in zip(a, b, strict=True):
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (
                isinstance(x, np.ndarray)
                and isinstance(y, np.ndarray)
                and x.dtype == y.dtype
                and np.array_equal(x, y)
            ):
                return False
        elif x != y:
            return False
    return True


class StatisticsAhead:
    """The guesses of one walk: armed before a producer's visit, fed by its output pass,
    taken (or not) by the consumer's statistics.

    Attributes:
        used: consumers whose statistics came from a guess.
        rejected: guesses gathered but not taken (their consumers ran their own pass).
    """

    def __init__(self) -> None:
        self._armed: dict[str, Callable[[], Guess | None]] = {}
        self._active: dict[str, Guess | None] = {}
        self._done: dict[str, Guess] = {}
        self.used = 0
        self.rejected = 0

    def arm(self, source: str, build: Callable[[], Guess | None]) -> None:
        """Guess during the output pass of ``source``: ``build()`` (called once the first
        block is stored, when the output quantizer and ranges are set) makes the guess, or
        None."""
        self._armed[source] = build

    def feed(self, source: str, b: int, ints: np.ndarray) -> None:
        """Block ``b`` of ``source`` was stored as ``ints``."""
        build = self._armed.pop(source, None)
        if build is not None:
            try:
                self._active[source] = build()
            except Exception:  # a guess that cannot be built is no guess
                self._active[source] = None
        guess = self._active.get(source)
        if guess is None:
            return
        try:
            guess.add(b, ints)
        except Exception:  # the consumer's own pass runs and reports it
            self._active[source] = None
            guess.collect()

    def finish(self, source: str) -> None:
        """The visit of ``source``'s producer is over: keep a complete guess for its
        consumer."""
        self._armed.pop(source, None)
        guess = self._active.pop(source, None)
        if guess is not None and guess.collect() and guess.extremes.dtype is not None:
            self._done[guess.out] = guess

    def close(self) -> None:
        """The walk is over (whatever happened): stop the native reductions still running."""
        self._armed.clear()
        for guess in self._active.values():
            if guess is not None:
                guess.collect()
        self._active.clear()

    def take(self, out: str, op: Any, variable: list[str], store: WalkStore) -> np.ndarray | None:
        """The ``[min, max]`` of consumer output ``out`` when a guess gathered exactly its
        pass's numbers (forgotten here), else None."""
        guess = self._done.pop(out, None)
        if guess is None:
            return None
        if not guess.matches(op, variable, store):
            self.rejected += 1
            return None
        self.used += 1
        return guess.extremes.result()


# --- the walk's side: which consumer, and the guess built on the producer's clip range ----


def guess_for(walk: Any, node: Any) -> Callable[[], Guess | None] | None:
    """How to guess, during the output pass of ``node``, the statistics of the op that
    reads its output (directly, or through one monotone table op that alone reads it),
    or None when the walk or the graph does not allow it: PTQ, several blocks of at least
    ``MIN_ROWS`` rows in all, one reader, a consumer served by the extremes kernels
    whose only variable input is that tensor, min/max statistics, no bias correction."""
    if not ENABLED or walk.strategy.flows_raw or walk.store.n_blocks < 2:
        return None
    if sum(walk.store.block_sizes) < MIN_ROWS:
        return None
    registry = quantized_registry()
    later = walk.nodes[node.index + 1 :]
    source = node.outputs[0]
    readers = [n for n in later if source in n.inputs]
    if len(readers) != 1:
        return None
    table_node: Any = None
    reader = readers[0]
    cls = registry.get(reader.op_type)
    if getattr(cls, "monotone_table", False) and getattr(cls, "calibrate_by_table", False):
        if len(reader.outputs) != 1 or any(
            n and n != source and n not in walk.constants for n in reader.inputs
        ):
            return None
        method = walk.plan.for_op(reader.name).activations
        if method is not None and method.name not in walk.tables.SERVES_STATISTICS:
            return None
        table_node = reader
        consumers = [n for n in later if table_node.outputs[0] in n.inputs]
        if len(consumers) != 1 or walk._reads_presence(consumers[0]):
            return None
        reader = consumers[0]
        cls = registry.get(reader.op_type)
    read = source if table_node is None else table_node.outputs[0]
    if getattr(cls, "fused_extremes", None) is None or len(reader.outputs) != 1:
        return None
    if not reader.inputs or reader.inputs[0] != read or reader.inputs.count(read) != 1:
        return None
    if any(n and n != read and n not in walk.constants for n in reader.inputs):
        return None
    calib = walk.plan.for_op(reader.name)
    method = calib.activations
    if calib.bias_correction or (
        method is not None and method.name not in fused_stats.SERVES_STATISTICS
    ):
        return None
    return lambda: build_guess(walk, source, table_node, reader)


def build_guess(walk: Any, source: str, table_node: Any, reader: Any) -> Guess | None:
    """Build the guess of :func:`guess_for` once the first block of ``source`` is
    stored: the table op evaluated on the whole clip range of ``source``'s quantizer, the
    consumer built on the table op's quantizer, and its extremes accumulator."""
    tensor = walk.tensors[source]
    q = tensor.quantizer
    if tensor.kind != "quant" or tensor.stored_floats or q is None:
        return None
    if not native_dequant_params(q):
        return None
    lo, hi = q.clip_bounds()
    if hi - lo >= TABLE_MAX_SIZE:
        return None
    read, read_q, table = source, q, None
    if table_node is not None:
        table_op = walk._build_op(table_node, [source])
        if not walk.tables.applies(table_op, [source]):
            return None
        read = table_node.outputs[0]
        size = hi - lo + 1
        built = element_table(table_op, q, np.ones(size, dtype=bool), lo, size, read)
        if built is None:
            return None
        quant, table, qlo, qhi = built
        read_q = quant.quantizer
        if not native_dequant_params(read_q):
            return None
        ends = read_q.dequant(np.array([qlo, qhi], dtype=np.int64))
        producers = tensor.producers if table_op.can_fuse() else {read}
        saved = walk.tensors.get(read)
        walk.tensors[read] = WalkTensor(
            "quant", read_q, ends[0], ends[1], set(producers), qmin=qlo, qmax=qhi
        )
        try:
            consumer = walk._build_op(reader, [read])
        finally:
            if saved is None:
                del walk.tensors[read]
            else:
                walk.tensors[read] = saved
    else:
        consumer = walk._build_op(reader, [source])
    with use_split_independent_impl(consumer):
        extremes = fused_stats.Extremes.of(consumer, [read], reader.outputs[0])
    if extremes is None:
        return None
    return Guess(
        source=source,
        read=read,
        out=reader.outputs[0],
        lo=lo,
        table=table,
        dequant=fused_stats.dequant_pair(read_q),
        extremes=extremes,
        plan=plan_key(extremes.plan),
    )
