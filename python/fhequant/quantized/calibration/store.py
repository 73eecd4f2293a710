"""The tensors of the calibration walk and their blocks (docs/contract.md decision 4).

:class:`WalkStore` knows, for every variable tensor of the walk (graph input or op output),
what it holds (:class:`WalkTensor`: raw floats, quantized integers, their ranges, how many
consumers still read it) and keeps its per-block values in a
:class:`~fhequant.quantized.tensor_store.TensorStore` (in memory up to a budget, then spilled).
It is the :class:`~fhequant.quantized.fused_stats.BlockSource` the passes read from: the row
blocks (with the progress bar), the float values that flow downstream and, for quantized
tensors, the stored integers. The output of an element-wise op calibrated by table is not
stored: it is a :class:`~fhequant.quantized.calibration.views.TableView` of its input, whose
blocks are computed when read (the same arrays the stored blocks would be).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fhequant import _core
from fhequant.quantization import QuantizedArray, UniformQuantizer
from fhequant.quantized.calibration.views import TableView
from fhequant.quantized.tensor_store import TensorStore

__all__ = [
    "RECYCLE",
    "TABLE_INDEX",
    "Progress",
    "WalkStore",
    "WalkTensor",
    "indexes_tables",
    "mark_presence",
    "native_dequant_params",
    "requantizes_to_itself",
]

_NARROW_DEQUANT = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32))

#: The output pass of a tensor's last consumer frees each of its blocks once read
#: (:meth:`WalkStore.recyclable`); False keeps them until the consumer is done (same results).
RECYCLE = True
#: Integer tables are built for ranges of fewer integers than this.
TABLE_MAX_SIZE = 1 << 16
#: Stored integer dtypes a table lookup reads as they are.
TABLE_INDEX = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64))


def native_dequant_params(q: UniformQuantizer) -> bool:
    """Scalar real zero point and float64 scale: the native dequantize kernel applies."""
    scale, zp = q.scale, q.zero_point
    return (
        isinstance(scale, (float, np.float64))
        and isinstance(zp, (int, float, np.integer, np.floating))
        and not isinstance(zp, (bool, np.float16, np.longdouble))
    )


@dataclass
class WalkTensor:
    """A variable tensor of the walk: a graph input or an op output."""

    kind: str  # "input", "quant" or "raw"
    quantizer: UniformQuantizer | None = None
    vmin: Any = None
    vmax: Any = None
    producers: set[str] = field(default_factory=set)
    consumers_left: int = 0
    stored_floats: bool = False
    # the range of the stored integers over all blocks (kind "quant", PTQ)
    qmin: int | None = None
    qmax: int | None = None
    # a consumer may be calibrated by table: mark the integers present while storing them
    # (``present[i]``: the integer ``present_lo + i`` occurs), which saves it a pass
    track_presence: bool = False
    present_lo: int | None = None
    present: np.ndarray | None = None

    def presence(self) -> np.ndarray | None:
        """Which integers of [qmin, qmax] the stored blocks hold, when marked on the way in."""
        if not self.track_presence or self.present is None or self.qmin is None:
            return None
        if self.present_lo != self.qmin or self.qmax is None:
            return None
        return self.present if self.present.size == self.qmax - self.qmin + 1 else None


def requantizes_to_itself(quantizer: UniformQuantizer, tensor: WalkTensor, q: np.ndarray) -> bool:
    """Whether quant(dequant(q)) == q for this quantizer: a finite non-zero scalar scale, a
    scalar zp and the tensor's integers inside the clip range (graph-output accumulators
    are not)."""
    scale, zp = quantizer.scale, quantizer.zero_point
    if np.ndim(scale) or np.ndim(zp) or not np.isfinite(scale) or scale == 0 or q.size == 0:
        return False
    if quantizer.no_clipping or q.dtype.kind not in "iu" or tensor.qmin is None:
        return False
    offset = quantizer.offset or 0
    lo, hi = -offset + (1 if quantizer.is_narrow else 0), 2**quantizer.n_bits - 1 - offset
    return bool(lo <= tensor.qmin and tensor.qmax is not None and tensor.qmax <= hi)


def indexes_tables(tensor: WalkTensor) -> bool:
    """Whether blocks of ``tensor`` can index an integer table: stored integers of a known,
    small range whose floats are the native dequantize of a scalar scale and zero point."""
    q = tensor.quantizer
    return (
        tensor.kind == "quant"
        and not tensor.stored_floats
        and q is not None
        and native_dequant_params(q)
        and tensor.qmin is not None
        and tensor.qmax is not None
        and tensor.qmax - tensor.qmin < TABLE_MAX_SIZE
    )


def mark_presence(tensor: WalkTensor, ints: np.ndarray, qlo: Any, qhi: Any) -> None:
    """Add the integers of one stored block (of min ``qlo`` and max ``qhi``) to the tensor's
    presence marks; stop marking when the block cannot index a table."""
    lo, hi = int(qlo), int(qhi)
    if (
        ints.dtype not in TABLE_INDEX
        or not ints.flags.c_contiguous
        or hi - lo >= TABLE_MAX_SIZE
        or ints.dtype.kind not in "iu"
    ):
        tensor.track_presence = False
        tensor.present_lo = tensor.present = None
        return
    seen = _core.int_presence(ints, lo, hi - lo + 1)
    if tensor.present is None or tensor.present_lo is None:
        tensor.present_lo, tensor.present = lo, seen
        return
    start = min(lo, tensor.present_lo)
    end = max(hi + 1, tensor.present_lo + tensor.present.size)
    if hi - lo + 1 >= end - start and start == lo:
        seen[tensor.present_lo - lo : tensor.present_lo - lo + tensor.present.size] |= (
            tensor.present
        )
        tensor.present_lo, tensor.present = lo, seen
        return
    merged = np.zeros(end - start, dtype=bool)
    old_lo = tensor.present_lo - start
    merged[old_lo : old_lo + tensor.present.size] |= tensor.present
    merged[lo - start : hi + 1 - start] |= seen
    if merged.size > TABLE_MAX_SIZE:
        tensor.track_presence = False
        tensor.present_lo = tensor.present = None
        return
    tensor.present_lo, tensor.present = start, merged


class Progress:
    """A tqdm bar over rows, one pass at a time (only when asked or on a terminal).

    The bar counts the rows of the current pass (tqdm's rate is that pass's rows/s); its
    postfix gives the calibration's overall throughput, the rows of the set over the time
    since the walk started, and how many passes over the rows it has made.
    """

    def __init__(self, total_rows: int, verbose: bool) -> None:
        self.bar: Any = None
        if verbose or sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_rows, unit="row", unit_scale=True, leave=False, file=sys.stderr
            )
        self.passes = 0
        self.rows = 0
        self.began = time.perf_counter()

    def start(self, what: str, total_rows: int) -> None:
        self.passes += 1
        if self.bar is not None:
            self.bar.reset(total=total_rows)
            self.bar.set_description(f"calibration pass {self.passes}: {what}")
            self.bar.set_postfix_str(self._overall(), refresh=False)

    def advance(self, rows: int) -> None:
        if self.passes == 1:
            self.rows += rows  # the first pass reads the whole set
        if self.bar is not None:
            self.bar.update(rows)

    def _overall(self) -> str:
        elapsed = time.perf_counter() - self.began
        rate = self.rows / elapsed if elapsed > 0 else 0.0
        return f"{self.rows} rows, {rate:,.0f} rows/s overall, {self.passes} passes"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class WalkStore:
    """The variable tensors of one calibration walk and their blocks.

    Args:
        memory_budget: bytes of blocks kept in memory before spilling to disk.
        flows_raw: QAT import: op outputs are kept as their raw floats (PTQ keeps integers).
    """

    def __init__(self, memory_budget: int, flows_raw: bool) -> None:
        self.flows_raw = flows_raw
        self.tensors: dict[str, WalkTensor] = {}
        self.data = TensorStore(memory_budget)
        #: the tensors read through a table from another one's stored integers
        self.views: dict[str, TableView] = {}
        self.block_sizes: list[int] = []
        self.progress: Progress | None = None

    @property
    def n_blocks(self) -> int:
        return len(self.block_sizes)

    def blocks(self, what: str) -> Iterator[int]:
        """The block indices of one pass over all rows, advancing the progress bar."""
        assert self.progress is not None
        self.progress.start(what, sum(self.block_sizes))
        for b, rows in enumerate(self.block_sizes):
            yield b
            self.progress.advance(rows)

    def last_block(self, what: str) -> Iterator[int]:
        """The index of the last block only (a pass whose result needs one block)."""
        assert self.progress is not None
        self.progress.start(what, self.block_sizes[-1])
        yield self.n_blocks - 1
        self.progress.advance(self.block_sizes[-1])

    def close(self) -> None:
        """Close the progress bar and free every block (spill files included)."""
        if self.progress is not None:
            self.progress.close()
        self.data.close()
        self.views.clear()

    # --- handing blocks over (to or from another store) ------------------------------------

    def stored_blocks(self, name: str) -> tuple[list[np.ndarray], list[np.dtype[Any]]]:
        """Every block of ``name`` as stored (integers possibly narrowed) and the dtype each
        stands for: what :meth:`adopt_blocks` takes."""
        if name in self.views:  # materialised: the other store holds no view of it
            return [self.stored_block(name, b) for b in range(self.n_blocks)], [
                np.dtype(np.int64)
            ] * self.n_blocks
        n = self.data.n_blocks(name)
        return [self.data.get_stored(name, b) for b in range(n)], self.data.dtypes(name)

    def adopt_blocks(
        self, name: str, blocks: list[np.ndarray], dtypes: list[np.dtype[Any]]
    ) -> None:
        """Hold the given blocks of ``name`` (not copied: the caller must not modify them)."""
        for block, dtype in zip(blocks, dtypes, strict=True):
            self.data.put(name, block, owned=False, dtype=dtype)

    # --- reading blocks -------------------------------------------------------------------

    def has_blocks(self, name: str) -> bool:
        """Whether tensor ``name`` has blocks to read (stored, or a view of stored ones)."""
        return name in self.data or name in self.views

    def stored_block(self, name: str, b: int) -> np.ndarray:
        """Block ``b`` of tensor ``name`` as stored (integers possibly narrowed); a view's
        block as the store would hold it."""
        view = self.views.get(name)
        if view is None:
            return self.data.get_stored(name, b)
        return view.stored(self.table_index_block(view.base, b))

    def int_block(self, name: str, b: int) -> np.ndarray:
        """Block ``b`` of tensor ``name`` in the dtype it stands for (a view's: int64)."""
        if name not in self.views:
            return self.data.get(name, b)
        stored = self.stored_block(name, b)
        return stored if stored.dtype == np.int64 else stored.astype(np.int64)

    def holds(self, name: str, b: int, array: Any) -> bool:
        """Whether ``array`` is the store's own block ``b`` of ``name`` (never for a view:
        its blocks are computed on each read)."""
        return name not in self.views and self.data.holds(name, b, array)

    def float_block(self, name: str, b: int) -> Any:
        """The float values of tensor ``name`` in block ``b`` (what flows downstream)."""
        narrow = self.narrow_stored_block(name, b)
        if narrow is not None:
            stored, q = narrow
            return q.dequant(stored)
        tensor = self.tensors[name]
        if tensor.kind == "quant" and not tensor.stored_floats and tensor.quantizer is not None:
            return tensor.quantizer.dequant(self.int_block(name, b))
        return self.int_block(name, b)

    def narrow_stored_block(self, name: str, b: int) -> tuple[np.ndarray, UniformQuantizer] | None:
        """Block ``b`` of a quantized tensor as stored in int8/16/32, with its quantizer, when
        the native dequantize reads it as it is: the same float64 bits as for the widened
        int64 block, without the widening copy. None otherwise."""
        tensor = self.tensors[name]
        q = tensor.quantizer
        if tensor.kind != "quant" or tensor.stored_floats or q is None:
            return None
        stored = self.stored_block(name, b)
        if (
            stored.ndim
            and stored.size
            and stored.dtype in _NARROW_DEQUANT
            and native_dequant_params(q)
        ):
            return stored, q
        return None

    def table_index_block(self, name: str, b: int) -> np.ndarray:
        """Block ``b`` of a quant tensor as contiguous signed integers (as stored if it can)."""
        stored = self.stored_block(name, b)
        if stored.dtype not in TABLE_INDEX:
            stored = self.int_block(name, b).astype(np.int64)
        return np.ascontiguousarray(stored)

    # --- writing blocks -------------------------------------------------------------------

    def store_output(self, out: str, b: int, quant: Any, raw: Any) -> np.ndarray | None:
        """Keep block ``b`` of an op's output for its consumers.

        PTQ keeps the integers (dequantized on read), quantized straight into int8/int16
        when the output quantizer allows; QAT import keeps the raw floats.

        Returns:
            The integers handed to the store (PTQ, a tensor some op reads), else None.
        """
        tensor = self.tensors[out]
        if isinstance(quant, QuantizedArray):
            tensor.kind = "quant"
            tensor.quantizer = quant.quantizer
            if self.flows_raw:
                tensor.stored_floats = True
                values = np.asarray(raw)
                lo, hi = (values.min(), values.max()) if values.size else (None, None)
                if tensor.consumers_left > 0:
                    self.data.put(out, values)
            elif tensor.consumers_left <= 0:
                return None  # a graph output only: no op reads its blocks or ranges
            else:
                ints, qlo, qhi = quant.compact_qvalues()
                ints = np.asarray(ints)
                self.store_ints(out, ints, qlo, qhi, np.int64 if qlo is not None else None)
                return ints
            if lo is not None:
                tensor.vmin = lo if tensor.vmin is None else min(tensor.vmin, lo)
                tensor.vmax = hi if tensor.vmax is None else max(tensor.vmax, hi)
        else:
            tensor.kind = "raw"
            if tensor.consumers_left > 0:
                self.data.put(out, np.asarray(quant))
        return None

    def store_ints(self, out: str, ints: np.ndarray, qlo: Any, qhi: Any, wide: Any) -> None:
        """Keep a block of integers of the quant tensor ``out`` (whose quantizer is set),
        merging their range and the range of their float values.

        Args:
            out: the tensor.
            ints: the block's integers (``wide`` given: a fresh array narrowed from it).
            qlo: their min (None: computed here).
            qhi: their max.
            wide: the dtype the integers stand for, or None when ``ints`` has it.
        """
        tensor = self.tensors[out]
        quantizer = tensor.quantizer
        assert quantizer is not None
        if tensor.consumers_left <= 0:
            return  # a graph output only: no op reads its blocks or ranges
        bounds = None
        if ints.size:
            if qlo is None:
                qlo, qhi = ints.min(), ints.max()
            if ints.dtype.kind in "iu":
                qlo, qhi = int(qlo), int(qhi)
                bounds = (qlo, qhi)
                tensor.qmin = qlo if tensor.qmin is None else min(tensor.qmin, qlo)
                tensor.qmax = qhi if tensor.qmax is None else max(tensor.qmax, qhi)
            lo, hi = self.value_range(quantizer, ints, qlo, qhi, wide)
            tensor.vmin = lo if tensor.vmin is None else min(tensor.vmin, lo)
            tensor.vmax = hi if tensor.vmax is None else max(tensor.vmax, hi)
            if tensor.track_presence:
                mark_presence(tensor, ints, qlo, qhi)
        self.data.put(out, ints, dtype=wide, bounds=bounds)

    def keep_view(self, out: str, base: str, lo: int, table: np.ndarray, seen: np.ndarray) -> bool:
        """Make quant tensor ``out`` (its quantizer set) the view ``table[q - lo]`` of the
        stored integers ``q`` of ``base``, with the ranges and presence marks its stored blocks
        would have had.

        Args:
            out: the element-wise op's output.
            base: its input (a view of a view is made a view of the first one's base).
            lo: the smallest integer of ``base`` (``table[0]`` is its output).
            table: the output integers over ``base``'s integer range, in the dtype of the
                blocks (one of ``TABLE_INDEX``).
            seen: which integers of ``base``'s range occur in its blocks.

        Returns:
            False (nothing done) when the ranges cannot be derived from the table (not a
            scalar, positive scale): the caller stores the blocks.
        """
        tensor = self.tensors[out]
        quantizer = tensor.quantizer
        assert quantizer is not None
        scale, zp = quantizer.scale, quantizer.zero_point
        if tensor.consumers_left <= 0:
            return True  # a graph output only: no op reads its blocks or ranges
        if np.ndim(scale) or np.ndim(zp) or not scale > 0 or not seen.any():
            return False
        values = np.ascontiguousarray(table[seen])  # the integers the blocks hold
        qlo, qhi = int(values.min()), int(values.max())
        # store_ints on every non-empty block: the same table ends, merged
        tensor.qmin, tensor.qmax = qlo, qhi
        ends = quantizer.dequant(np.array([qlo, qhi], dtype=np.int64))
        tensor.vmin, tensor.vmax = ends[0], ends[1]
        if tensor.track_presence:
            mark_presence(tensor, values, qlo, qhi)
        inner = self.views.get(base)
        view = TableView(base, lo, table) if inner is None else inner.then(lo, table)
        self.views[out] = view
        return True

    @staticmethod
    def value_range(
        quantizer: UniformQuantizer, q: np.ndarray, qlo: Any, qhi: Any, wide: Any
    ) -> tuple[Any, Any]:
        """min/max of quantizer.dequant(q) for a non-empty block of min ``qlo`` and max
        ``qhi``, without dequantizing everything when monotone."""
        scale = quantizer.scale
        zp = quantizer.zero_point
        if np.ndim(zp) == 0 and np.ndim(scale) == 0 and scale > 0:
            ends = quantizer.dequant(np.array([qlo, qhi], dtype=q.dtype if wide is None else wide))
            return ends[0], ends[1]
        values = quantizer.dequant(q if wide is None else q.astype(wide))
        return values.min(), values.max()

    def reset_output(self, out: str) -> None:
        """Forget the blocks and ranges of ``out`` (before another output pass)."""
        tensor = self.tensors[out]
        self._free(out)
        tensor.vmin = tensor.vmax = None
        tensor.qmin = tensor.qmax = None
        tensor.present_lo = tensor.present = None

    def release(self, name: str) -> None:
        """One consumer of ``name`` is calibrated: free its blocks after the last one."""
        tensor = self.tensors[name]
        tensor.consumers_left -= 1
        if tensor.consumers_left <= 0:
            self._free(name)

    def recyclable(self, name: str) -> str | None:
        """The stored tensor whose blocks the output pass of the last consumer of ``name``
        may free as it reads them (``self.data.recycle``), so that the pass's output blocks
        take their memory or spill region; None when they must stay. A stored tensor
        qualifies when no view reads it; a view gives its base when the base has no consumer
        left and no other view."""
        if not RECYCLE:
            return None
        view = self.views.get(name)
        stored = name if view is None else view.base
        if stored not in self.data or stored in self.views:
            return None
        readers = sum(1 for v in self.views.values() if v.base == stored)
        if view is None and readers:
            return None
        if view is not None:
            base = self.tensors.get(stored)
            if readers != 1 or base is None or base.consumers_left > 0:
                return None
        return stored

    def _free(self, name: str) -> None:
        """Free the blocks of ``name`` (a view: its table, then its base's blocks when no
        consumer or other view reads them); a tensor that views read is kept for them."""
        view = self.views.pop(name, None)
        if view is not None:
            base = self.tensors.get(view.base)
            if base is None or base.consumers_left <= 0:
                self._free(view.base)
            return
        if not any(v.base == name for v in self.views.values()):
            self.data.drop(name)
