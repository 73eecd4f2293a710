"""The calibration walk: from an ONNX graph and calibration data to a QuantizedModule
(docs/contract.md §4).

:func:`quantize_module` walks the graph in ONNX order. Constants and initializers go through
the strategy's ``process_initializer`` (§4.3), constant-only nodes are folded, and every other
node becomes a quantized op that is calibrated on the *fake-quantized* outputs of its
producers (§4.2): ``op.calibrate`` on the float data sets the output quantizer, then
``op.q_impl`` (rounding calibration for mixing ops) gives the values that flow downstream.

Two strategies share the walk (composition, not mixins): :class:`PTQStrategy`
(PTQ: signed-from-data asymmetric input options, dequantized values flow downstream) and
:class:`QATImportStrategy` (QAT: QAT input options, the raw float output flows).

Streaming (docs/contract.md decision 4). The data is cut into blocks of ``block_rows`` rows anchored
at row 0 (:mod:`fhequant.quantized.streaming`), whatever the batch sizes of the source, and each op
is calibrated block by block with its producers' final parameters:

* statistics pass: the float op on every block; global min/max merged exactly, then the output
  quantizer is set from them (the same numbers as QA(n_bits, whole tensor));
* rounding passes (mixing ops with rounding_threshold_bits): each rounding point (``cnp_round``
  id) is calibrated on the global [min, max] of its accumulator, one id per pass in call order,
  earlier ids already rounding with their final ``lsbs_to_remove`` (a ``RoundingRangeObserver``
  of the executor gathers the range: nothing is patched on the op);
* output pass: ``q_impl`` on every block; the quantized output is kept (compactly, spilled to
  disk beyond a memory budget) for the consumers, then freed.

With a single block this is exactly the whole-set walk of the reference: ``op.calibrate`` and
``op.q_impl(..., calibrate_rounding=True)`` on all rows at once. Ops whose calibration is not a
min/max reduction (Div's divider, Brevitas Quant, ...) are calibrated on the concatenation of
their inputs over all blocks, which is exact but holds that op's inputs in memory. BatchNorm's
percentile clip is streamed exactly from bounded tails (:mod:`fhequant.quantized.percentile`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from fhequant import _core
from fhequant.errors import (
    GraphInputError,
    NonFiniteError,
    UnsupportedOpError,
)
from fhequant.kernels import quant as _kernels
from fhequant.quantization import QuantizationOptions, QuantizedArray, UniformQuantizer
from fhequant.quantized.exec import ClearBackend, Executor, RoundingRangeObserver, use_executor
from fhequant.quantized.fused_stats import fused_statistics
from fhequant.quantized.graph import (
    BREVITAS_QUANT as _BREVITAS_QUANT,
)
from fhequant.quantized.graph import (
    GraphNode,
    fold_constant,
    graph_input_names,
    graph_nodes,
    quantized_registry,
    use_split_independent_impl,
)
from fhequant.quantized.n_bits import resolve_n_bits
from fhequant.quantized.percentile import TailSelector, percentile_from_tails
from fhequant.quantized.strategies import (
    PTQStrategy,
    QATImportStrategy,
    QuantizationStrategy,
    process_initializer_ptq,
    process_initializer_qat,
)
from fhequant.quantized.streaming import (
    DEFAULT_BLOCK_ROWS,
    DEFAULT_MEMORY_BUDGET,
    CalibrationData,
    TensorStore,
    iter_row_blocks,
    normalize_calibration_data,
    smallest_int,
)

__all__ = [
    "PTQStrategy",
    "QATImportStrategy",
    "QuantizationStrategy",
    "process_initializer_ptq",
    "process_initializer_qat",
    "quantize_module",
]


# --- the walk --------------------------------------------------------------------------------


_NARROW_DEQUANT = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32))


def _native_dequant_params(q: UniformQuantizer) -> bool:
    """Scalar real zero point and float64 scale: the native dequantize kernel applies."""
    scale, zp = q.scale, q.zero_point
    return (
        isinstance(scale, (float, np.float64))
        and isinstance(zp, (int, float, np.integer, np.floating))
        and not isinstance(zp, (bool, np.float16, np.longdouble))
    )


@dataclass
class _Tensor:
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


def _requantizes_to_itself(quantizer: UniformQuantizer, tensor: _Tensor, q: np.ndarray) -> bool:
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


def _union_uvalues(uniques: Any, values: Any) -> Any:
    """Sorted union of the 2-decimal unique values (MinMaxQuantizationStats.uvalues)."""
    batch = _kernels.rounded_unique(np.asarray(values))
    if batch is None or uniques is None:
        return batch if uniques is None else uniques
    return np.union1d(uniques, batch)


def _check_finite(lo: Any, hi: Any, tensor: str, where: str) -> None:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise NonFiniteError(
            f"{where}: tensor {tensor!r} contains NaN or infinite values (min {lo}, max {hi}); "
            "clean the calibration data or fix the model so every value stays finite"
        )


_TABLE_MAX_SIZE = 1 << 16
_TABLE_INDEX = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64))


def _indexes_tables(tensor: _Tensor) -> bool:
    """Whether blocks of ``tensor`` can index an integer table: stored integers of a known,
    small range whose floats are the native dequantize of a scalar scale and zero point."""
    q = tensor.quantizer
    return (
        tensor.kind == "quant"
        and not tensor.stored_floats
        and q is not None
        and _native_dequant_params(q)
        and tensor.qmin is not None
        and tensor.qmax is not None
        and tensor.qmax - tensor.qmin < _TABLE_MAX_SIZE
    )


def _plain(value: Any) -> Any:
    return value.values if isinstance(value, QuantizedArray) else value


def _bits_precision(lo: int, hi: int) -> int:
    from fhequant.quantized.ops.base import compute_bits_precision

    return int(compute_bits_precision(lo, hi))


def _has_default_calibration(op: Any) -> bool:
    """Calibration is a min/max of the float result (possibly BatchNorm's percentile clip)."""
    from fhequant.quantized.ops.base import QuantizedOp

    cls = type(op)
    if cls.calibrate is not QuantizedOp.calibrate:
        return False
    return cls._calibration_values is QuantizedOp._calibration_values or _clips_percentiles(op)


def _clips_percentiles(op: Any) -> bool:
    """The op's stats are on the raw output clipped to its 0.1/99.9 percentiles (BatchNorm)."""
    return bool(type(op).clips_percentiles)


class _Progress:
    """A tqdm bar over rows, one pass at a time (only when asked or on a terminal)."""

    def __init__(self, total_rows: int, verbose: bool) -> None:
        self.bar: Any = None
        if verbose or sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_rows, unit="row", leave=False, file=sys.stderr)
        self.passes = 0

    def start(self, what: str, total_rows: int) -> None:
        self.passes += 1
        if self.bar is not None:
            self.bar.reset(total=total_rows)
            self.bar.set_description(f"calibration pass {self.passes}: {what}")

    def advance(self, rows: int) -> None:
        if self.bar is not None:
            self.bar.update(rows)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ModuleCalibrator:
    """Runs the calibration walk of one ONNX model with one strategy.

    Args:
        model: the (pre-processed) ONNX model.
        strategy: PTQ or QAT import.
        rounding_threshold_bits: passed to every mixing op.
        block_rows: rows per evaluation block.
        memory_budget: bytes of intermediate blocks kept in memory before spilling to disk.
        verbose: show a progress bar even when stderr is not a terminal.
        preprocess: optional function applied to each block of inputs (ONNX pre-processing).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        strategy: QuantizationStrategy,
        rounding_threshold_bits: Any = None,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        verbose: bool = False,
        preprocess: Callable[..., tuple[np.ndarray, ...]] | None = None,
    ) -> None:
        if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
            raise GraphInputError(f"batch_size must be a positive int, got {block_rows!r}")
        self.model = model
        self.strategy = strategy
        self.bits = strategy.bits
        self.rounding_threshold_bits = rounding_threshold_bits
        self.block_rows = block_rows
        self.memory_budget = memory_budget
        self.verbose = verbose
        self.preprocess = preprocess
        self.input_names = graph_input_names(model)
        self.output_names = [o.name for o in model.graph.output]
        self.nodes = graph_nodes(model)
        self.constants: dict[str, Any] = {
            init.name: numpy_helper.to_array(init) for init in model.graph.initializer
        }
        self.tensors: dict[str, _Tensor] = {}
        self.quant_layers: dict[str, tuple[tuple[str, ...], Any]] = {}
        self.node_inputs: dict[str, tuple[str, ...]] = {}
        self.block_sizes: list[int] = []
        self.input_stats: dict[str, tuple[Any, Any]] = {}
        self._input_quant_cache: dict[tuple[str, Any], UniformQuantizer] = {}
        self._requant_tables: dict[tuple[str, int], Any] = {}
        self._requant_buffers: dict[tuple[str, int], np.ndarray] = {}
        self.store = TensorStore(memory_budget)
        self.progress: _Progress | None = None

    # --- entry ---------------------------------------------------------------------------

    def run(self, data: Any) -> dict[str, Any]:
        """Calibrate every op.

        Args:
            data: calibration data (see :func:`normalize_calibration_data`).

        Returns:
            A dict with the ordered input and output names, quant_layers_dict, the per-input
            quantizers (docs/contract.md §4.6) and the number of calibration rows.
        """
        calib = normalize_calibration_data(data)
        try:
            self._load_inputs(calib)
            self._count_consumers()
            for node in self.nodes:
                self._visit(node)
            input_quantizers = self._input_quantizers()
        finally:
            if self.progress is not None:
                self.progress.close()
            self.store.close()
        return {
            "input_names": tuple(self.input_names),
            "output_names": tuple(self.output_names),
            "quant_layers_dict": self.quant_layers,
            "input_quantizers": input_quantizers,
            "node_inputs": self.node_inputs,
            "n_rows": sum(self.block_sizes),
            "spilled": self.store.spilled,
        }

    @property
    def n_blocks(self) -> int:
        return len(self.block_sizes)

    def _blocks(self, what: str) -> Iterator[int]:
        assert self.progress is not None
        self.progress.start(what, sum(self.block_sizes))
        for b, rows in enumerate(self.block_sizes):
            yield b
            self.progress.advance(rows)

    # --- graph inputs --------------------------------------------------------------------

    def _load_inputs(self, calib: CalibrationData) -> None:
        n_inputs = len(self.input_names)
        in_memory = calib.arrays is not None
        if in_memory:
            assert calib.arrays is not None
            if len(calib.arrays) != n_inputs:
                raise GraphInputError(
                    f"the model takes {n_inputs} input(s) {self.input_names} but the "
                    f"calibration data holds {len(calib.arrays)}; give a tuple with one array "
                    "per input"
                )
            total = calib.arrays[0].shape[0] if calib.arrays[0].ndim else 0
        else:
            total = 0
        self.progress = _Progress(total, self.verbose)
        self.progress.start("inputs", total)
        lows: list[Any] = [None] * n_inputs
        highs: list[Any] = [None] * n_inputs
        for block in iter_row_blocks(calib, n_inputs, self.block_rows):
            if self.preprocess is not None:
                block = self.preprocess(*block)
                owned = True
            else:
                owned = not in_memory
            rows = block[0].shape[0]
            self.block_sizes.append(rows)
            for i, (name, arr) in enumerate(zip(self.input_names, block, strict=True)):
                if arr.size:
                    lo, hi = arr.min(), arr.max()
                    _check_finite(lo, hi, name, "calibration data")
                    lows[i] = lo if lows[i] is None else np.minimum(lows[i], lo)
                    highs[i] = hi if highs[i] is None else np.maximum(highs[i], hi)
                self.store.put(name, arr, owned=owned)
            self.progress.advance(rows)
        if not self.block_sizes:
            raise GraphInputError("the calibration data is empty; give at least one row per input")
        for i, name in enumerate(self.input_names):
            self.input_stats[name] = (lows[i], highs[i])
            self.tensors[name] = _Tensor("input", vmin=lows[i], vmax=highs[i], producers={name})

    def _count_consumers(self) -> None:
        for node in self.nodes:
            for name in node.inputs:
                if name in self.tensors:
                    self.tensors[name].consumers_left += 1

    # --- nodes ---------------------------------------------------------------------------

    def _visit(self, node: GraphNode) -> None:
        if node.op_type == "Constant":
            self.constants[node.outputs[0]] = self._constant_node_value(node)
            return
        variable = [n for n in node.inputs if n in self.tensors]
        if not variable and node.op_type == _BREVITAS_QUANT:
            self.constants[node.outputs[0]] = self._fold_brevitas_quant(node)
            return
        if not variable:
            values = [self.constants.get(n) if n else None for n in node.inputs]
            values = [v.values if isinstance(v, QuantizedArray) else v for v in values]
            self.constants[node.outputs[0]] = fold_constant(node, values)
            return
        if len(node.outputs) != 1:
            raise UnsupportedOpError(
                f"node {node.name!r} ({node.op_type}) has {len(node.outputs)} outputs; "
                "quantized ops must have exactly one"
            )
        op = self._build_op(node, variable)
        out = node.outputs[0]
        producers: set[str] = set()
        for name in variable:
            producers |= self.tensors[name].producers
        self.tensors[out] = _Tensor("raw", producers=producers if op.can_fuse() else {out})
        for n in self.nodes[node.index + 1 :]:
            self.tensors[out].consumers_left += sum(1 for i in n.inputs if i == out)
        self._calibrate_op(op, variable, out)
        self._requant_tables.clear()  # one op at a time: its tables and buffers are done
        self._requant_buffers.clear()
        self.quant_layers[out] = (tuple(variable), op)
        for name in variable:
            self._release(name)
        if self.tensors[out].consumers_left == 0:
            self.store.drop(out)

    def _fold_brevitas_quant(self, node: GraphNode) -> QuantizedArray:
        """A Quant on a constant (weights, bias): a precomputed-QAT QA
        (docs/contract.md §3.8, §4.2)."""
        cls = quantized_registry()[_BREVITAS_QUANT]
        values = [self.constants.get(n) if n else None for n in node.inputs]
        values = [v.values if isinstance(v, QuantizedArray) else v for v in values]
        if values[0] is None:
            raise GraphInputError(
                f"Quant node {node.name!r}: its input {node.inputs[0]!r} is empty"
            )
        op = cls(
            self.bits.model_outputs,
            node.name,
            constant_inputs={i: v for i, v in enumerate(values) if i > 0 and v is not None},
            input_quant_opts=self.strategy.input_quant_opts(self.bits.op_weights, True),
            **node.attrs,
        )
        op.calibrate(values[0])
        folded = op.q_impl(values[0])
        assert isinstance(folded, QuantizedArray)
        return folded

    def _release(self, name: str) -> None:
        tensor = self.tensors[name]
        tensor.consumers_left -= 1
        if tensor.consumers_left <= 0:
            self.store.drop(name)

    def _constant_node_value(self, node: GraphNode) -> Any:
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in node.attrs:
                value = node.attrs[key]
                if key == "value_float":
                    return np.array(value, dtype=np.float32)
                if key == "value_floats":
                    return np.array(value, dtype=np.float32)
                if key in ("value_int", "value_ints"):
                    return np.array(value, dtype=np.int64)
                return value
        raise UnsupportedOpError(
            f"Constant node {node.name!r} has none of the supported value attributes"
        )

    def _build_op(self, node: GraphNode, variable: list[str]) -> Any:
        registry = quantized_registry()
        cls = registry.get(node.op_type)
        if cls is None:
            raise UnsupportedOpError(
                f"node {node.name!r}: op {node.op_type!r} has no quantized implementation; "
                f"quantizable ops are {sorted(registry)}"
            )
        constants: dict[int, Any] = {}
        for idx, name in enumerate(node.inputs):
            if not name or name in self.tensors or name not in self.constants:
                continue
            value = self.constants[name]
            if cls.must_quantize_input(idx):
                constants[idx] = self.strategy.process_initializer(value, name)
            else:
                constants[idx] = value.values if isinstance(value, QuantizedArray) else value
        int_input_names: set[str] = set()
        signed = False
        for name in variable:
            tensor = self.tensors[name]
            if tensor.kind != "raw" or tensor.quantizer is not None:
                # raw tensors (shapes, indices) are not encrypted: they produce no integers
                int_input_names |= tensor.producers
            if tensor.vmin is not None and tensor.vmin < 0:
                signed = True
        n_in = (
            self.bits.model_outputs
            if cls.quantize_inputs_with_model_outputs_precision
            else self.bits.op_inputs
        )
        kwargs: dict[str, Any] = {}
        if cls.is_mixing:
            kwargs["rounding_threshold_bits"] = self.rounding_threshold_bits
        op = cls(
            self.bits.model_outputs,
            node.name,
            int_input_names=int_input_names,
            constant_inputs=constants,
            input_quant_opts=self.strategy.input_quant_opts(n_in, signed),
            **kwargs,
            **node.attrs,
        )
        op.produces_graph_output = node.outputs[0] in self.output_names
        if self.strategy.flows_raw:
            op.error_tracker = []  # QAT: inputs re-quantized with QAT options
            # (docs/contract.md §4.5)
        self.node_inputs[node.outputs[0]] = tuple(node.inputs)
        return op

    # --- per-block data ------------------------------------------------------------------

    def _float_block(self, name: str, b: int) -> Any:
        """The float values of tensor ``name`` in block ``b`` (what flows downstream)."""
        narrow = self.narrow_stored_block(name, b)
        if narrow is not None:
            stored, q = narrow
            return q.dequant(stored)
        tensor = self.tensors[name]
        if tensor.kind == "quant" and not tensor.stored_floats and tensor.quantizer is not None:
            return tensor.quantizer.dequant(self.store.get(name, b))
        return self.store.get(name, b)

    def narrow_stored_block(self, name: str, b: int) -> tuple[np.ndarray, UniformQuantizer] | None:
        """Block ``b`` of a quantized tensor as stored in int8/16/32, with its quantizer, when
        the native dequantize reads it as it is: the same float64 bits as for the widened
        int64 block, without the widening copy. None otherwise."""
        tensor = self.tensors[name]
        q = tensor.quantizer
        if tensor.kind != "quant" or tensor.stored_floats or q is None:
            return None
        stored = self.store.get_stored(name, b)
        if (
            stored.ndim
            and stored.size
            and stored.dtype in _NARROW_DEQUANT
            and _native_dequant_params(q)
        ):
            return stored, q
        return None

    def _calibration_qa(self, name: str, b: int, op: Any) -> Any:
        """The calibration QuantizedArray of a variable input (docs/contract.md §4.2 step 1)."""
        tensor = self.tensors[name]
        if tensor.kind == "quant" and not tensor.stored_floats:
            q = tensor.quantizer
            assert q is not None
            requantized = self._requantized_input(name, b, op)
            if requantized is not None:
                return requantized
            ints = self.store.get(name, b)
            if _requantizes_to_itself(q, tensor, ints):
                # QA(n, dequant(q), q's params) would quantize back to exactly q: build it
                # from the integers (values = the same float64 dequant) and skip that pass.
                wide = np.asarray(ints, dtype=np.int64)
                return QuantizedArray(
                    q.n_bits,
                    wide,
                    value_is_float=False,
                    options=q.quant_options,
                    stats=q.quant_stats,
                    params=q.quant_params,
                    # a widened copy is ours already; a block kept as stored is copied
                    copy_values=self.store.holds(name, b, wide),
                    # the float values only when the op reads them (same bits, once)
                    defer=True,
                )
        data = self._float_block(name, b)
        if tensor.kind == "raw":
            return data
        if tensor.kind == "quant":
            q = tensor.quantizer
            assert q is not None
            return QuantizedArray(
                q.n_bits,
                data,
                options=q.quant_options,
                stats=q.quant_stats,
                params=q.quant_params,
            )
        opts = op.input_quant_opts
        ref = self._input_reference(name, opts, data.dtype)
        return QuantizedArray(
            opts.n_bits,
            data,
            options=opts,
            stats=ref.quant_stats,
            params=ref.quant_params,
        )

    def _requantized_input(self, name: str, b: int, op: Any) -> QuantizedArray | None:
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
        key = (name, id(op))
        if key not in self._requant_tables:
            self._requant_tables[key] = self._requant_table(name, op)
        found = self._requant_tables[key]
        if found is None:
            return None
        quantizer, table = found
        lo = self.tensors[name].qmin
        assert lo is not None  # checked by _requant_table
        block = self._table_index_block(name, b)
        if block.size:
            # The op reads these integers once and keeps nothing of them (Gemm/MatMul/Conv
            # results are new arrays, shape ops copy), so one buffer serves every block.
            buffer = self._requant_buffers.get(key)
            if buffer is None or buffer.shape != block.shape:
                buffer = self._requant_buffers[key] = np.empty(block.shape, dtype=np.int64)
            ints = _core.int_lookup(block, lo, table, buffer)
        else:
            ints = block.astype(np.int64)
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

    def _requant_table(self, name: str, op: Any) -> tuple[UniformQuantizer, np.ndarray] | None:
        """The consumer quantizer and the int64 table of :meth:`_requantized_input`."""
        tensor = self.tensors[name]
        q = tensor.quantizer
        opts = op.input_quant_opts
        needs_constant = type(op).requant_table_if_constant
        if (
            self.strategy.flows_raw
            or needs_constant is None
            or any(i not in op.constant_inputs for i in needs_constant)
            or not _indexes_tables(tensor)
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

    def _input_reference(self, name: str, opts: QuantizationOptions, dtype: Any) -> Any:
        """A quantizer with the whole-set statistics of a graph input under ``opts``."""
        key = (name, repr(opts.dump_dict()))
        cached = self._input_quant_cache.get(key)
        if cached is None:
            lo, hi = self.input_stats[name]
            ends = np.array([lo, hi], dtype=dtype)
            cached = QuantizedArray(opts.n_bits, ends, options=opts).quantizer
            self._input_quant_cache[key] = cached
        return cached

    # --- calibration of one op -----------------------------------------------------------

    def _calibrate_op(self, op: Any, variable: list[str], out: str) -> None:
        if self._calibrate_by_table(op, variable, out):
            return
        with use_split_independent_impl(op):
            if self.n_blocks == 1:
                self._calibrate_whole(op, variable, out)
            else:
                self._calibrate_streamed(op, variable, out)

    def _calibrate_by_table(self, op: Any, variable: list[str], out: str) -> bool:
        """Calibrate an element-wise op of one quantized tensor through its integers.

        The op's float input is ``dequant(q)``, so its result depends only on each element's
        integer: the op runs once on the distinct integers present (found in one pass), its
        output statistics are the min/max of those results, and the output integers come
        from a table indexed by the input integers. The numbers are those of the block walk:
        the same element-wise evaluations on the same floats, one per distinct value.

        Returns:
            False (nothing done) when the op or its input does not qualify.
        """
        if not self._table_applies(op, variable):
            return False
        name = variable[0]
        tensor = self.tensors[name]
        q = tensor.quantizer
        assert q is not None and tensor.qmin is not None and tensor.qmax is not None
        lo, size = tensor.qmin, tensor.qmax - tensor.qmin + 1
        seen = np.zeros(size, dtype=bool)
        for b in self._blocks(f"{op.op_instance_name} statistics"):
            block = self._table_index_block(name, b)
            if block.size:
                seen |= _core.int_presence(block, lo, size)
        present = np.flatnonzero(seen).astype(np.int64) + lo
        if present.size == 0:
            return False
        prepared = op._prepare_inputs_with_constants(
            q.dequant(present), calibrate=True, quantize_actual_values=False
        )
        floats = np.asarray(op.call_impl(*prepared, **op.attrs))
        if floats.shape != present.shape or floats.dtype.kind != "f":
            return False
        fmin, fmax = floats.min(), floats.max()
        _check_finite(fmin, fmax, out, f"op {op.op_instance_name!r} ({type(op).__name__})")
        zeros = floats[floats == 0]
        if (fmin == 0 or fmax == 0) and np.signbit(zeros).any() and not np.signbit(zeros).all():
            return False  # numpy's min/max of mixed-sign zeros depends on their positions
        op._set_output_quantizer(np.array([fmin, fmax], dtype=floats.dtype))
        quant = op.make_output_quant_array(floats, owned=True)
        table_ints = np.asarray(quant.qvalues)
        qlo, qhi = int(table_ints.min()), int(table_ints.max())
        dtype = smallest_int(qlo, qhi, _TABLE_INDEX) or np.dtype(np.int64)
        table = np.full(size, qlo, dtype=dtype)
        table[present - lo] = table_ints
        self.tensors[out].kind = "quant"
        self.tensors[out].quantizer = quant.quantizer
        for b in self._blocks(f"{op.op_instance_name} outputs"):
            if self.tensors[out].consumers_left <= 0:
                continue  # a graph output only: nothing to keep
            block = self._table_index_block(name, b)
            ints = _core.int_lookup(block, lo, table) if block.size else block.astype(np.int64)
            self._store_ints(out, ints, qlo, qhi, np.int64 if ints.dtype != np.int64 else None)
        self._finish(op, out, quant, None)
        return True

    def _table_applies(self, op: Any, variable: list[str]) -> bool:
        """PTQ, an element-wise op (``calibrate_by_table`` on its class) with its default
        calibration and q_impl and only scalar constants, on one quantized tensor whose floats
        are the native dequantize of integers of a known, small range."""
        from fhequant.quantized.ops.base import QuantizedOp

        cls = type(op)
        if (
            self.strategy.flows_raw
            or len(variable) != 1
            or not cls.calibrate_by_table
            or cls.q_impl is not QuantizedOp.q_impl
            or not _has_default_calibration(op)
            or _clips_percentiles(op)
            or op.spec().raw_output
            or any(np.ndim(_plain(v)) != 0 for v in op.constant_inputs.values())
        ):
            return False
        return _indexes_tables(self.tensors[variable[0]])

    def _table_index_block(self, name: str, b: int) -> np.ndarray:
        """Block ``b`` of a quant tensor as contiguous signed integers (as stored if it can)."""
        stored = self.store.get_stored(name, b)
        if stored.dtype not in _TABLE_INDEX:
            stored = self.store.get(name, b).astype(np.int64)
        return np.ascontiguousarray(stored)

    def _calibrate_whole(self, op: Any, variable: list[str], out: str) -> None:
        """The reference walk on the whole set (one block).

        Ops with the default calibration get their output quantizer from the min/max of the
        float result (the numbers of QA(n_bits, raw), without its unused uvalues sort).
        """
        raw_blocks: list[Any] | None
        if _has_default_calibration(op):
            raw_blocks = self._statistics_pass(op, variable, out)
        else:
            floats = [self._float_block(n, 0) for n in variable]
            self._check_inputs_finite(op, variable, floats)
            raw = self._op_calibrate(op, out, floats)
            raw_blocks = [raw] if self.strategy.flows_raw else None
        qas = [self._calibration_qa(n, 0, op) for n in variable]
        quant = op.q_impl(*qas, calibrate_rounding=bool(getattr(op, "is_mixing", False)))
        self._store_output(out, 0, quant, raw_blocks[0] if raw_blocks is not None else None)
        self._finish(op, out, quant, raw_blocks)

    def _calibrate_streamed(self, op: Any, variable: list[str], out: str) -> None:
        raw_blocks: list[Any] | None = None
        if not _has_default_calibration(op):
            raw_blocks = self._calibrate_concatenated(op, variable, out)
        else:
            raw_blocks = self._statistics_pass(op, variable, out)
        rounding = getattr(op, "is_mixing", False) and op.rounding_threshold_bits is not None
        while True:
            # each pass gathers the accumulator range of the next uncalibrated rounding point
            recorder = RoundingRangeObserver(op) if rounding else None
            scope = (
                use_executor(Executor(ClearBackend(), recorder))
                if recorder is not None
                else contextlib.nullcontext()
            )
            self._reset_output(out)
            last: Any = None
            with scope:
                for b in self._blocks(f"{op.op_instance_name} outputs"):
                    qas = [self._calibration_qa(n, b, op) for n in variable]
                    last = op.q_impl(*qas)
                    raw = raw_blocks[b] if raw_blocks is not None else None
                    self._store_output(out, b, last, raw)
            if recorder is None or recorder.pending is None:
                break
            # One more rounding point calibrated: its accumulator range is global now.
            assert recorder.lo is not None and recorder.hi is not None
            target = int(op.rounding_threshold_bits["n_bits"])
            width = _bits_precision(recorder.lo, recorder.hi)
            op.lsbs_to_remove[recorder.pending] = max(0, width - target)
        self._finish(op, out, last, raw_blocks)

    def _reset_output(self, out: str) -> None:
        tensor = self.tensors[out]
        self.store.drop(out)
        tensor.vmin = tensor.vmax = None
        tensor.qmin = tensor.qmax = None

    def _calibrate_concatenated(self, op: Any, variable: list[str], out: str) -> list[Any] | None:
        """Exact fallback for ops whose calibration is not a min/max reduction."""
        parts: list[list[Any]] = [[] for _ in variable]
        for b in self._blocks(f"{op.op_instance_name} (gathering inputs)"):
            for i, name in enumerate(variable):
                parts[i].append(self._float_block(name, b))
        floats = [np.concatenate(p, axis=0) for p in parts]
        self._check_inputs_finite(op, variable, floats)
        raw = self._op_calibrate(op, out, floats)
        if not self.strategy.flows_raw:
            return None
        starts = np.cumsum([0, *self.block_sizes])
        return [raw[starts[i] : starts[i + 1]] for i in range(self.n_blocks)]

    def _statistics_pass(self, op: Any, variable: list[str], out: str) -> list[Any] | None:
        """Global min/max of the float op over all blocks; sets the output quantizer.

        BatchNorm with per-channel parameters first clips its output to the 0.1 and 99.9
        percentiles of the whole tensor (docs/contract.md §3.7); they are computed exactly from the
        smallest and largest 0.1 % of the values (:mod:`fhequant.quantized.percentile`).
        """
        lo: Any = None
        hi: Any = None
        dtype: Any = None
        keep: list[Any] | None = [] if self.strategy.flows_raw else None
        raw_output = bool(op.spec().raw_output)
        selector: TailSelector | None = None
        uniques: Any = None
        if keep is None and not raw_output and not _clips_percentiles(op):
            # only the min/max are used: the native kernels need not materialise the result
            fused = fused_statistics(self, op, variable, out)
            if fused is not None:
                op._set_output_quantizer(fused)
                return None
        for b in self._blocks(f"{op.op_instance_name} statistics"):
            floats = [self._float_block(n, b) for n in variable]
            prepared = op._prepare_inputs_with_constants(
                *floats, calibrate=True, quantize_actual_values=False
            )
            raw = op.call_impl(*prepared, **op.attrs)
            if keep is not None:
                keep.append(raw)
            if raw_output:
                continue
            arr = np.asarray(raw)
            if (
                b == 0
                and _clips_percentiles(op)
                and (np.size(prepared[1]) > 1 or np.size(prepared[2]) > 1)
            ):
                per_row = arr.size // max(arr.shape[0], 1) if arr.ndim else 1
                selector = TailSelector(per_row * sum(self.block_sizes))
            if arr.size == 0:
                continue
            blo, bhi = arr.min(), arr.max()
            _check_finite(blo, bhi, out, f"op {op.op_instance_name!r} ({type(op).__name__})")
            lo = blo if lo is None else np.minimum(lo, blo)
            hi = bhi if hi is None else np.maximum(hi, bhi)
            dtype = arr.dtype
            if selector is not None:
                selector.update(arr)
            if keep is not None:
                uniques = _union_uvalues(uniques, arr)
        if not raw_output:
            ends = np.array([lo, hi], dtype=dtype)
            if selector is not None:
                ends = np.clip(
                    ends,
                    percentile_from_tails(selector, 0.1),
                    percentile_from_tails(selector, 99.9),
                )
            op._set_output_quantizer(ends)
            if keep is not None and op.output_quant_stats is not None:
                # QAT import: check_is_uniform_quantized needs the real uvalues
                # (docs/contract.md §1.2).
                op.output_quant_stats.uvalues = uniques
        return keep

    def _store_output(self, out: str, b: int, quant: Any, raw: Any) -> None:
        """Keep block ``b`` of an op's output for its consumers.

        PTQ keeps the integers (dequantized on read), quantized straight into int8/int16
        when the output quantizer allows; QAT import keeps the raw floats.
        """
        tensor = self.tensors[out]
        if isinstance(quant, QuantizedArray):
            tensor.kind = "quant"
            tensor.quantizer = quant.quantizer
            if self.strategy.flows_raw:
                tensor.stored_floats = True
                values = np.asarray(raw)
                lo, hi = (values.min(), values.max()) if values.size else (None, None)
                if tensor.consumers_left > 0:
                    self.store.put(out, values)
            elif tensor.consumers_left <= 0:
                return  # a graph output only: no op reads its blocks or ranges
            else:
                ints, qlo, qhi = quant.compact_qvalues()
                ints = np.asarray(ints)
                self._store_ints(out, ints, qlo, qhi, np.int64 if qlo is not None else None)
                return
            if lo is not None:
                tensor.vmin = lo if tensor.vmin is None else min(tensor.vmin, lo)
                tensor.vmax = hi if tensor.vmax is None else max(tensor.vmax, hi)
        else:
            tensor.kind = "raw"
            if tensor.consumers_left > 0:
                self.store.put(out, np.asarray(quant))

    def _store_ints(self, out: str, ints: np.ndarray, qlo: Any, qhi: Any, wide: Any) -> None:
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
        if ints.size:
            if qlo is None:
                qlo, qhi = ints.min(), ints.max()
            if ints.dtype.kind in "iu":
                qlo, qhi = int(qlo), int(qhi)
                tensor.qmin = qlo if tensor.qmin is None else min(tensor.qmin, qlo)
                tensor.qmax = qhi if tensor.qmax is None else max(tensor.qmax, qhi)
            lo, hi = self._value_range(quantizer, ints, qlo, qhi, wide)
            tensor.vmin = lo if tensor.vmin is None else min(tensor.vmin, lo)
            tensor.vmax = hi if tensor.vmax is None else max(tensor.vmax, hi)
        self.store.put(out, ints, dtype=wide)

    @staticmethod
    def _value_range(
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

    def _finish(self, op: Any, out: str, quant: Any, raw_blocks: Any) -> None:
        """A graph-output op takes the params of its q_impl result (docs/contract.md §4.2
        step 4)."""
        if op.produces_graph_output and isinstance(quant, QuantizedArray):
            op.output_quant_stats = quant.quantizer.quant_stats
            op.output_quant_params = quant.quantizer.quant_params

    def _op_calibrate(self, op: Any, out: str, floats: list[Any]) -> Any:
        """op.calibrate on whole tensors, with non-finite outputs reported by tensor and op."""
        try:
            raw = op.calibrate(*floats)
        except NonFiniteError as exc:
            raise NonFiniteError(
                f"op {op.op_instance_name!r} ({type(op).__name__}): tensor {out!r} contains NaN "
                "or infinite values; clean the calibration data or fix the model so every "
                f"value stays finite ({exc})"
            ) from exc
        self._check_output_finite(op, out, raw)
        return raw

    def _check_inputs_finite(self, op: Any, names: list[str], floats: list[Any]) -> None:
        for name, values in zip(names, floats, strict=True):
            arr = np.asarray(values)
            if arr.size and np.issubdtype(arr.dtype, np.floating):
                _check_finite(arr.min(), arr.max(), name, f"input of op {op.op_instance_name!r}")

    def _check_output_finite(self, op: Any, out: str, raw: Any) -> None:
        arr = np.asarray(raw)
        if arr.size and np.issubdtype(arr.dtype, np.floating):
            _check_finite(
                arr.min(), arr.max(), out, f"op {op.op_instance_name!r} ({type(op).__name__})"
            )

    # --- module input quantizers (docs/contract.md §4.6) ------------------------------------------

    def _consumers(self, name: str) -> list[Any]:
        return [op for _, (inputs, op) in self.quant_layers.items() if name in inputs]

    def _input_quantizers(self) -> list[UniformQuantizer | None]:
        quantizers: list[UniformQuantizer | None] = []
        for name in self.input_names:
            lo, hi = self.input_stats[name]
            direct = self._consumers(name)
            if not direct:
                quantizers.append(None)
                continue
            brevitas = [op for op in direct if type(op).__name__ == "QuantizedBrevitasQuant"]
            fusable = [op for op in direct if op.can_fuse() and op not in brevitas]
            dtype = np.asarray(lo).dtype
            ends = np.array([lo, hi], dtype=dtype)
            if fusable or len(brevitas) > 1:
                qa = QuantizedArray(self.bits.model_inputs, ends, is_signed=True)
                quantizers.append(qa.quantizer)
            elif len(brevitas) == 1:
                op = brevitas[0]
                qa = QuantizedArray(
                    op.output_quant_opts.n_bits,  # the Brevitas bit width, not model_outputs
                    None,
                    value_is_float=False,
                    options=op.output_quant_opts,
                    stats=op.output_quant_stats,
                    params=op.output_quant_params,
                )
                quantizers.append(qa.quantizer)
            else:
                opts = direct[0].input_quant_opts
                qa = QuantizedArray(opts.n_bits, ends, options=opts)
                quantizers.append(qa.quantizer)
        return quantizers


_POW2_RTOL = 0.01


def _pow2_exponent(scale: Any) -> int | None:
    """round(log2 s) when the (scalar, positive) scale is within 1% of that power of two."""
    arr = np.asarray(scale, dtype=np.float64)
    if arr.size != 1:
        return None
    value = float(arr.reshape(-1)[0])
    if not np.isfinite(value) or value <= 0:
        return None
    e = int(np.round(np.log2(value)))
    return e if np.isclose(value, 2.0**e, rtol=_POW2_RTOL, atol=0.0) else None


def _op_scale(op: Any) -> Any:
    params = getattr(op, "output_quant_params", None)
    return None if params is None else params.scale


def apply_power_of_two_scaling(module: Any, rounding_threshold_bits: Any = None) -> list[str]:
    """The QAT power-of-two pass (docs/contract.md §4.7).

    For each chain BrevitasQuant → Gemm/MatMul/Conv (one encrypted input) → Relu →
    BrevitasQuant → Gemm/Conv whose input, weight and output scales are powers of two
    (rtol 1%), the accumulator of the first linear op drops k = -(log2 s_in + log2 s_w -
    log2 s_out) low bits, a shift-like requantization (only when k > 0 and the user set no
    rounding_threshold_bits).

    Args:
        module: the QuantizedModule (QAT import).
        rounding_threshold_bits: the user's setting; anything but None disables the pass.

    Returns:
        The names of the ops that were rewritten.
    """
    if rounding_threshold_bits is not None:
        return []
    layers: dict[str, tuple[tuple[str, ...], Any]] = module.quant_layers_dict
    consumers: dict[str, list[tuple[str, Any]]] = {}
    for out, (inputs, op) in layers.items():
        for name in inputs:
            consumers.setdefault(name, []).append((out, op))

    def only_consumer(name: str) -> tuple[str, Any] | None:
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 else None

    rewritten: list[str] = []
    for out, (inputs, op) in layers.items():
        if not type(op).pow2_accumulator_shift or len(inputs) != 1:
            continue
        producer = layers.get(inputs[0])
        if producer is None or producer[1]._impl_for_op_named != _BREVITAS_QUANT:
            continue
        relu = only_consumer(out)
        if relu is None or relu[1]._impl_for_op_named != "Relu":
            continue
        quant = only_consumer(relu[0])
        if quant is None or quant[1]._impl_for_op_named != _BREVITAS_QUANT:
            continue
        nxt = only_consumer(quant[0])
        if nxt is None or nxt[1]._impl_for_op_named not in ("Gemm", "Conv"):
            continue
        weight = op.constant_inputs.get(1)
        if not isinstance(weight, QuantizedArray):
            continue
        exps = [
            _pow2_exponent(_op_scale(producer[1])),
            _pow2_exponent(weight.quantizer.scale),
            _pow2_exponent(_op_scale(quant[1])),
        ]
        if any(e is None for e in exps):
            continue
        e_in, e_w, e_out = (int(e) for e in exps if e is not None)
        k = -(e_in + e_w - e_out)
        if k <= 0:
            continue
        if 2 <= k <= 8:
            op.rounding_threshold_bits = k
        op.lsbs_to_remove["matmul"] = k
        rewritten.append(op.op_instance_name)
    return rewritten


def quantize_module(
    model: onnx.ModelProto,
    data: Any,
    n_bits: Any = 8,
    rounding_threshold_bits: Any = None,
    import_qat: bool = False,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    verbose: bool = False,
    preprocess: Callable[..., tuple[np.ndarray, ...]] | None = None,
) -> dict[str, Any]:
    """Run the calibration walk (docs/contract.md §4.2) and return what QuantizedModule needs.

    Args:
        model: the ONNX model (pre-processed).
        data: calibration data: an array, a tuple of arrays, or an iterable of batches.
        n_bits: int or dict (docs/contract.md §4.1).
        rounding_threshold_bits: for every mixing op (docs/contract.md §2.4).
        import_qat: use the QAT importer instead of PTQ.
        block_rows: rows per evaluation block.
        memory_budget: bytes of intermediates kept in memory before spilling to disk.
        verbose: show a progress bar.
        preprocess: a function applied to each input block (ONNX pre-processing).

    Returns:
        input_names, output_names, quant_layers_dict, input_quantizers, n_rows, spilled.
    """
    bits = resolve_n_bits(n_bits)
    strategy: QuantizationStrategy = QATImportStrategy(bits) if import_qat else PTQStrategy(bits)
    calibrator = ModuleCalibrator(
        model,
        strategy,
        rounding_threshold_bits=rounding_threshold_bits,
        block_rows=block_rows,
        memory_budget=memory_budget,
        verbose=verbose,
        preprocess=preprocess,
    )
    return calibrator.run(data)
