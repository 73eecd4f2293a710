"""The table paths of the calibration walk: ops fed by stored integers of a small range.

Two shortcuts give the numbers of the block walk without evaluating the op on every element:

* :meth:`TablePaths.calibrate_by_table`: an element-wise op of one quantized tensor runs once
  on the distinct integers present; its output integers come from a table indexed by the input
  integers, and the output is kept as a view of the input through that table
  (:class:`~fhequant.quantized.calibration.views.TableView`), not stored;
* :meth:`TablePaths.requantized_input`: a Gemm/MatMul/Conv (constant weights) or shape op that
  re-quantizes its input with options of its own reads the re-quantized integers from a table
  of ``quant(dequant(q))`` over the producer's integer range.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant import _core
from fhequant.kernels.quant import NARROW_INTS
from fhequant.quantization import QuantizedArray, UniformQuantizer
from fhequant.quantized.calibration import traits
from fhequant.quantized.calibration.store import TABLE_INDEX, WalkStore, indexes_tables
from fhequant.quantized.finite import check_finite
from fhequant.quantized.ops.base import QuantizedOp
from fhequant.quantized.tensor_store import smallest_int

__all__ = ["TablePaths", "element_table"]


def _plain(value: Any) -> Any:
    return value.values if isinstance(value, QuantizedArray) else value


def element_table(
    op: Any, q: Any, seen: np.ndarray, lo: int, size: int, out: str
) -> tuple[QuantizedArray, np.ndarray, int, int] | None:
    """Run an element-wise op on the integers marked present and quantize its results.

    Sets the op's output quantizer from the min/max of the results (the block walk's
    numbers: one evaluation per distinct value).

    Args:
        op: the element-wise op (``TablePaths.applies`` holds).
        q: the input tensor's quantizer.
        seen: presence mask of the input integers from ``lo`` on.
        lo: the smallest integer of the mask.
        size: the table length (the input's integer range).
        out: the op's output tensor name (for error messages).

    Returns:
        ``(output array, table indexed by q - lo, table min, table max)``, or None when the
        shortcut does not apply (nothing present, a non-float result, mixed-sign zeros).
    """
    present = np.flatnonzero(seen).astype(np.int64) + lo
    if present.size == 0:
        return None
    prepared = op._prepare_inputs_with_constants(
        q.dequant(present), calibrate=True, quantize_actual_values=False
    )
    floats = np.asarray(op.call_impl(*prepared, **op.attrs))
    if floats.shape != present.shape or floats.dtype.kind != "f":
        return None
    fmin, fmax = floats.min(), floats.max()
    check_finite(fmin, fmax, out, f"op {op.op_instance_name!r} ({type(op).__name__})")
    zeros = floats[floats == 0]
    if (fmin == 0 or fmax == 0) and np.signbit(zeros).any() and not np.signbit(zeros).all():
        return None  # numpy's min/max of mixed-sign zeros depends on their positions
    op._set_output_quantizer(np.array([fmin, fmax], dtype=floats.dtype))
    quant = op.make_output_quant_array(floats, owned=True)
    table_ints = np.asarray(quant.qvalues)
    qlo, qhi = int(table_ints.min()), int(table_ints.max())
    dtype = smallest_int(qlo, qhi, TABLE_INDEX) or np.dtype(np.int64)
    table = np.full(size, qlo, dtype=dtype)
    table[present - lo] = table_ints
    return quant, table, qlo, qhi


class TablePaths:
    """The integer-table shortcuts of one walk (PTQ only).

    Args:
        store: the walk's tensors and blocks.
        flows_raw: QAT import (no table path applies).
    """

    #: The calibration statistics the element-wise table path computes (it records which
    #: integers are present, not how often): other statistics take the statistics pass.
    SERVES_STATISTICS: tuple[str, ...] = ("minmax",)

    def __init__(self, store: WalkStore, flows_raw: bool) -> None:
        self.store = store
        self.flows_raw = flows_raw
        self._requant_tables: dict[tuple[str, int], Any] = {}
        self._requant_buffers: dict[tuple[str, int], np.ndarray] = {}
        self._narrow_tables: dict[tuple[str, int], np.ndarray | None] = {}
        self._lookups: dict[tuple[str, int], tuple[str, int, Any]] = {}

    def clear(self) -> None:
        """Forget the re-quantization tables and buffers (one op at a time: they are done)."""
        self._requant_tables.clear()
        self._requant_buffers.clear()
        self._narrow_tables.clear()
        self._lookups.clear()

    # --- element-wise ops by table ------------------------------------------------------

    def calibrate_by_table(self, op: Any, variable: list[str], out: str) -> bool:
        """Calibrate an element-wise op of one quantized tensor through its integers.

        The op's float input is ``dequant(q)``, so its result depends only on each element's
        integer: the op runs once on the distinct integers present (found in one pass), its
        output statistics are the min/max of those results, and the output integers come
        from a table indexed by the input integers. The numbers are those of the block walk:
        the same element-wise evaluations on the same floats, one per distinct value. The
        output is a view of the input through the table (``WalkStore.keep_view``): its blocks
        are looked up when read; they are stored only when its ranges cannot be derived from
        the table.

        Returns:
            False (nothing done) when the op or its input does not qualify.
        """
        if not self.applies(op, variable):
            return False
        store = self.store
        name = variable[0]
        tensor = store.tensors[name]
        q = tensor.quantizer
        assert q is not None and tensor.qmin is not None and tensor.qmax is not None
        lo, size = tensor.qmin, tensor.qmax - tensor.qmin + 1
        seen = tensor.presence()
        if seen is None and type(op).monotone_table and not store.tensors[out].track_presence:
            # non-decreasing: its extremes over the integers present are those at the ends of
            # the range, which occur; the table's other entries are never looked up
            seen = np.ones(size, dtype=bool)
        if seen is None:  # not marked while the producer stored them: one pass
            seen = np.zeros(size, dtype=bool)
            for b in store.blocks(f"{op.op_instance_name} statistics"):
                block = store.table_index_block(name, b)
                if block.size:
                    seen |= _core.int_presence(block, lo, size)
        built = element_table(op, q, seen, lo, size, out)
        if built is None:
            return False
        quant, table, qlo, qhi = built
        store.tensors[out].kind = "quant"
        store.tensors[out].quantizer = quant.quantizer
        if store.keep_view(out, name, lo, table, seen):
            traits.finish(op, quant)  # the output is a view of the input: nothing to store
            return True
        for b in store.blocks(f"{op.op_instance_name} outputs"):
            if store.tensors[out].consumers_left <= 0:
                continue  # a graph output only: nothing to keep
            block = store.table_index_block(name, b)
            ints = _core.int_lookup(block, lo, table) if block.size else block.astype(np.int64)
            store.store_ints(out, ints, qlo, qhi, np.int64 if ints.dtype != np.int64 else None)
        traits.finish(op, quant)
        return True

    def applies(self, op: Any, variable: list[str]) -> bool:
        """PTQ, an element-wise op (``calibrate_by_table`` on its class) with its default
        calibration and q_impl and only scalar constants, on one quantized tensor whose floats
        are the native dequantize of integers of a known, small range."""
        cls = type(op)
        if (
            self.flows_raw
            or len(variable) != 1
            or not cls.calibrate_by_table
            or cls.q_impl is not QuantizedOp.q_impl
            or not traits.has_default_calibration(op)
            or traits.clips_percentiles(op)
            or op.spec().raw_output
            or any(np.ndim(_plain(v)) != 0 for v in op.constant_inputs.values())
        ):
            return False
        return indexes_tables(self.store.tensors[variable[0]])

    # --- re-quantized inputs by table ---------------------------------------------------

    def requantized_input(self, name: str, b: int, op: Any) -> QuantizedArray | None:
        """Block ``b`` of tensor ``name`` as the op ``op`` re-quantizes it.

        An op whose class allows it (``requant_table_if_constant``: a Gemm/MatMul/Conv with
        constant weights, or a shape op) and whose input options differ from the producer's
        re-quantizes the producer's floats with the consumer's options (docs/contract.md §2.2,
        "otherwise"), and reads only the integers of the result. Those integers
        are a function of the producer's integers, so they come from a table computed once
        per op (the same element-wise quant(dequant(q)) on each integer of the tensor's
        range) instead of dequantizing and quantizing every block. Returns None when this
        does not apply.
        """
        if not self.requantizes(name, op):
            return None
        key = (name, id(op))
        quantizer, _ = self._requant_tables[key]
        source, lo, values = self._lookup(key, name, op.narrow_inputs)
        block = self.store.table_index_block(source, b)
        if block.size:
            # The op reads these integers once and keeps nothing of them (Gemm/MatMul/Conv
            # results are new arrays, shape ops copy), so one buffer serves every block.
            buffer = self._requant_buffers.get(key)
            if buffer is None or buffer.shape != block.shape or buffer.dtype != values.dtype:
                buffer = self._requant_buffers[key] = np.empty(block.shape, dtype=values.dtype)
            ints = _core.int_lookup(block, lo, values, buffer)
        else:
            ints = block.astype(np.int64)
        if ints.dtype != np.int64:
            # the op reads them narrow (``narrow_inputs``); ``qvalues`` widens them, and their
            # min and max are only computed if something asks for them
            return QuantizedArray.from_narrow_quantizer(quantizer, ints)
        return QuantizedArray(
            quantizer.n_bits,
            ints,
            value_is_float=False,
            options=quantizer.quant_options,
            stats=quantizer.quant_stats,
            params=quantizer.quant_params,
            copy_values=False,
            defer=True,
        )

    def _lookup(self, key: tuple[str, int], name: str, narrow: bool) -> tuple[str, int, Any]:
        """Where the re-quantized integers of ``name`` come from, once per op: the stored
        tensor, its smallest integer and the table indexed from it (int64, or the op's
        ``narrow`` dtype). A view's table is composed with the consumer's, so each block is
        one lookup from the view's base."""
        found = self._lookups.get(key)
        if found is None:
            _, table = self._requant_tables[key]
            small = self._narrow_table(key, table) if narrow else None
            values = table if small is None else small
            lo = self.store.tensors[name].qmin
            assert lo is not None  # checked by requant_table
            view = self.store.views.get(name)
            if view is None:
                found = (name, lo, values)
            else:
                found = (view.base, view.lo, view.compose(lo, values))
            self._lookups[key] = found
        return found

    def _narrow_table(self, key: tuple[str, int], table: np.ndarray) -> np.ndarray | None:
        """The int64 ``table`` as int8 or int16 when its values fit (the same numbers), else
        None; converted once per op."""
        if key not in self._narrow_tables:
            dtype = None
            if table.size:
                dtype = smallest_int(int(table.min()), int(table.max()), NARROW_INTS)
            self._narrow_tables[key] = None if dtype is None else table.astype(dtype)
        return self._narrow_tables[key]

    def requantizes(self, name: str, op: Any) -> bool:
        """Whether :meth:`requantized_input` serves the blocks of ``name`` read by ``op`` (a
        table built once per op)."""
        key = (name, id(op))
        if key not in self._requant_tables:
            self._requant_tables[key] = self.requant_table(name, op)
        return self._requant_tables[key] is not None

    def requantizes_to_same(self, name: str, op: Any) -> bool:
        """Whether the table of ``op`` reading ``name`` maps every integer to itself with
        the producer's scale and zero point (options that differ only where the integers
        do not move, such as a signed quantizer of a range that holds no negative value), so
        the op reads the stored integers as they are."""
        if not self.requantizes(name, op):
            return False
        quantizer, table = self._requant_tables[(name, id(op))]
        tensor = self.store.tensors[name]
        q = tensor.quantizer
        if q is None or tensor.qmin is None:
            return False
        same = np.array_equal(table, np.arange(tensor.qmin, tensor.qmin + table.size))
        return bool(
            same
            and np.ndim(quantizer.scale) == 0
            and np.ndim(quantizer.zero_point) == 0
            and quantizer.scale == q.scale
            and quantizer.zero_point == q.zero_point
        )

    def requant_table(self, name: str, op: Any) -> tuple[UniformQuantizer, np.ndarray] | None:
        """The consumer quantizer and the int64 table of :meth:`requantized_input`."""
        tensor = self.store.tensors[name]
        q = tensor.quantizer
        opts = op.input_quant_opts
        needs_constant = type(op).requant_table_if_constant
        if (
            self.flows_raw
            or needs_constant is None
            or any(i not in op.constant_inputs for i in needs_constant)
            or not indexes_tables(tensor)
            or q is None
            or q.is_qat
            or q.is_precomputed_qat
            or opts.is_qat
            or opts.is_equal(q.quant_options, ignore_sign_qat=True)
            or tensor.qmin is None
            or tensor.qmax is None
        ):
            return None
        values = q.dequant(np.arange(tensor.qmin, tensor.qmax + 1, dtype=np.int64))
        template = QuantizedArray(
            opts.n_bits, values, options=opts, stats=q.quant_stats, copy_values=False
        )
        table = np.asarray(template.qvalues)
        if table.dtype != np.int64:
            return None
        return template.quantizer, table
