"""Tensors of the calibration walk that are a table over another tensor's stored integers.

An element-wise op calibrated by table (``TablePaths.calibrate_by_table``) has output
integers ``table[q - lo]`` where ``q`` are its input's integers. Instead of writing those
blocks to the :class:`~fhequant.quantized.tensor_store.TensorStore` (and spilling them), the walk
records the output as a :class:`TableView` of its input and computes a block when something
reads it. A view of a view is a view of the first stored tensor with the two tables composed,
and a consumer that re-quantizes a view through a table of its own composes that table too,
so a block is always one lookup away from stored integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fhequant import _core
from fhequant.quantized.tensor_store import narrowest

__all__ = ["TableView"]


@dataclass(frozen=True)
class TableView:
    """The blocks of a tensor read as ``table[q - lo]`` from the stored integers ``q`` of
    tensor ``base``.

    Attributes:
        base: the stored tensor (never itself a view).
        lo: the integer of ``base`` that ``table[0]`` maps.
        table: the output integer of every integer of ``base``'s range.
    """

    base: str
    lo: int
    table: np.ndarray

    def ints(self, base_block: np.ndarray) -> np.ndarray:
        """The integers of one block (in the table's dtype; an empty block as int64), from
        the base block as a table indexes it (contiguous, signed)."""
        if not base_block.size:
            return base_block.astype(np.int64)
        return _core.int_lookup(base_block, self.lo, self.table)

    def stored(self, base_block: np.ndarray) -> np.ndarray:
        """The block as the store would hold :meth:`ints` (an int64 block narrowed as
        ``TensorStore.put`` narrows it)."""
        ints = self.ints(base_block)
        return narrowest(ints) if ints.dtype == np.int64 else ints

    def compose(self, lo: int, table: np.ndarray) -> np.ndarray:
        """``table`` (indexed by this view's integers minus ``lo``) as a table indexed by the
        base's integers: ``table[self.table - lo]``, in ``table``'s dtype.

        Every value of this view's table must be inside ``table``'s range, which holds for a
        table over this view's [qmin, qmax]: its entries are the op's outputs on the integers
        present, and the others repeat the smallest of them.
        """
        index = self.table.astype(np.intp) - lo
        assert not index.size or (index.min() >= 0 and index.max() < table.size)
        return np.ascontiguousarray(table[index])

    def then(self, lo: int, table: np.ndarray) -> TableView:
        """The view of ``table[v - lo]`` over this view's integers ``v`` (one lookup)."""
        return TableView(self.base, self.lo, self.compose(lo, table))
