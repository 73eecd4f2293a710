"""The calibration walk: from an ONNX graph and calibration data to the parts of a
QuantizedModule (docs/contract.md §4.2).

:class:`ModuleCalibrator` loads the graph inputs into its :class:`WalkStore`, then visits the
nodes in ONNX order: constants are folded, every other node becomes a quantized op that
:class:`OpPasses` calibrates on the blocks of its producers; a tensor's blocks are freed after
its last consumer. :func:`quantize_module` is the entry point.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from fhequant.errors import (
    CalibrationConfigError,
    FhequantError,
    GraphInputError,
    NonFiniteError,
    UnsupportedOpError,
)
from fhequant.kernels import quant as quant_kernels
from fhequant.kernels.memory import block_cache
from fhequant.quantization import QuantizedArray, StatisticSpec, UniformQuantizer
from fhequant.quantized import fused_stats
from fhequant.quantized.calibration import ahead, early
from fhequant.quantized.calibration.methods import WEIGHT_OPS, resolve_calibration
from fhequant.quantized.calibration.node_errors import node_failure
from fhequant.quantized.calibration.passes import OpPasses
from fhequant.quantized.calibration.store import Progress, WalkStore, WalkTensor
from fhequant.quantized.calibration.tables import TablePaths
from fhequant.quantized.finite import check_finite
from fhequant.quantized.graph import BREVITAS_QUANT as _BREVITAS_QUANT
from fhequant.quantized.graph import (
    GraphNode,
    fold_constant,
    graph_input_names,
    graph_nodes,
    quantized_registry,
)
from fhequant.quantized.n_bits import n_bits_per_op, resolve_n_bits
from fhequant.quantized.ops.rounding import rounding_per_op
from fhequant.quantized.per_op import PerOp
from fhequant.quantized.strategies import (
    PTQStrategy,
    QATImportStrategy,
    QuantizationStrategy,
)
from fhequant.quantized.streaming import (
    DEFAULT_BLOCK_ROWS,
    CalibrationData,
    iter_fresh_row_blocks,
    normalize_calibration_data,
    resolve_memory_budget,
)

__all__ = ["ModuleCalibrator", "quantize_module"]


class ModuleCalibrator:
    """Runs the calibration walk of one ONNX model with one strategy.

    Args:
        model: the (pre-processed) ONNX model.
        strategy: PTQ or QAT import.
        rounding_threshold_bits: passed to every mixing op (or per op: a mapping of op names,
            fhequant.quantized.per_op).
        block_rows: rows per evaluation block.
        memory_budget: bytes of intermediate blocks kept in memory before spilling to disk
            (None: ``streaming.auto_memory_budget``, from the machine's memory).
        verbose: show a progress bar even when stderr is not a terminal.
        preprocess: optional function applied to each block of inputs (ONNX pre-processing).
        n_bits_per_op: the per-op n_bits (a PerOp of BitWidths) or None (the strategy's).
        calibration: the statistics choosing the ranges (None: min/max everywhere;
            :mod:`fhequant.quantized.calibration.methods`).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        strategy: QuantizationStrategy,
        rounding_threshold_bits: Any = None,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        memory_budget: int | None = None,
        verbose: bool = False,
        preprocess: Callable[..., tuple[np.ndarray, ...]] | None = None,
        n_bits_per_op: PerOp | None = None,
        calibration: Any = None,
    ) -> None:
        if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
            raise GraphInputError(f"batch_size must be a positive int, got {block_rows!r}")
        self.model = model
        self.strategy = strategy
        self.bits = strategy.bits
        self.rounding_threshold_bits = rounding_threshold_bits
        self.rounding_per_op = rounding_per_op(rounding_threshold_bits)
        self.n_bits_per_op = n_bits_per_op
        self.block_rows = block_rows
        self.memory_budget = resolve_memory_budget(memory_budget)
        self.verbose = verbose
        self.preprocess = preprocess
        self.input_names = graph_input_names(model)
        self.output_names = [o.name for o in model.graph.output]
        self.nodes = graph_nodes(model)
        self.plan = resolve_calibration(calibration, [n.name for n in self.nodes])
        if strategy.flows_raw and not self.plan.is_minmax:
            raise CalibrationConfigError(
                "calibration: QAT import takes its ranges from the trained quantizers; "
                "calibration methods apply to post-training quantization (import_qat=False)"
            )
        self.constants: dict[str, Any] = {
            init.name: numpy_helper.to_array(init) for init in model.graph.initializer
        }
        self.quant_layers: dict[str, tuple[tuple[str, ...], Any]] = {}
        self.node_inputs: dict[str, tuple[str, ...]] = {}
        self.input_stats: dict[str, tuple[Any, Any]] = {}
        self.store = WalkStore(self.memory_budget, strategy.flows_raw)
        self.tensors = self.store.tensors
        self.tables = TablePaths(self.store, strategy.flows_raw)
        self.passes = OpPasses(self.store, self.tables, strategy.flows_raw, self.input_stats)
        self.passes.process_initializer = strategy.process_initializer
        self._calibrate_op: Callable[[Any, list[str], str], None] = self.passes.calibrate

    # --- entry ---------------------------------------------------------------------------

    def run(self, data: Any) -> dict[str, Any]:
        """Calibrate every op.

        Args:
            data: calibration data (see :func:`normalize_calibration_data`).

        Returns:
            A dict with the ordered input and output names, quant_layers_dict, the per-input
            quantizers (docs/contract.md §4.6) and the number of calibration rows.
        """
        op_names = [(node.name, *node.outputs[:1]) for node in self.nodes]
        for spec in (self.n_bits_per_op, self.rounding_per_op):
            if spec is not None:
                spec.check(op_names)
        calib = normalize_calibration_data(data)
        return self.walk(lambda: self._load_inputs(calib), self.passes.calibrate)

    def walk(
        self,
        load_inputs: Callable[[], None],
        calibrate_op: Callable[[Any, list[str], str], None],
    ) -> dict[str, Any]:
        """Visit the graph: ``load_inputs()`` hands the graph inputs over (it ends with
        :meth:`accept_inputs`), then every node is folded or built into an op that
        ``calibrate_op(op, variable_inputs, output)`` calibrates (the local walk:
        ``self.passes.calibrate``; fhequant.distributed: passes over partitions).

        Returns:
            What :meth:`run` returns (the store is closed).
        """
        self._calibrate_op = calibrate_op
        try:
            # block-sized buffers come back for the next block, pass and call
            with block_cache():
                load_inputs()
                self._count_consumers()
                for node in self.nodes:
                    try:
                        self._visit(node)
                    except FhequantError:
                        raise
                    except Exception as exc:  # numpy's errors of a float op, named (issue 15)
                        rows = self.store.block_sizes[0] if self.store.block_sizes else None
                        raise node_failure(node, exc, self.constants, rows) from exc
                input_quantizers = self._input_quantizers()
        finally:
            self.passes.ahead.close()
            self.store.close()
        return {
            "input_names": tuple(self.input_names),
            "output_names": tuple(self.output_names),
            "quant_layers_dict": self.quant_layers,
            "input_quantizers": input_quantizers,
            "node_inputs": self.node_inputs,
            "n_rows": sum(self.store.block_sizes),
            "spilled": self.store.data.spilled,
            "spilled_bytes": self.store.data.spilled_bytes,
        }

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
        watching = self._early_statistics()
        progress = self.store.progress = Progress(total, self.verbose)
        progress.start("inputs", total)
        lows: list[Any] = [None] * n_inputs
        highs: list[Any] = [None] * n_inputs
        for block, fresh in iter_fresh_row_blocks(calib, n_inputs, self.block_rows):
            if self.preprocess is not None:
                block = self.preprocess(*block)
                owned, fresh = True, False  # it may hand its inputs back
            else:
                owned = not in_memory
            rows = block[0].shape[0]
            self.store.block_sizes.append(rows)
            for i, (name, arr) in enumerate(zip(self.input_names, block, strict=True)):
                if arr.size:
                    lo, hi = _block_range(arr, name)
                    check_finite(lo, hi, name, "calibration data")
                    lows[i] = lo if lows[i] is None else np.minimum(lows[i], lo)
                    highs[i] = hi if highs[i] is None else np.maximum(highs[i], hi)
                self.store.data.put(name, arr, owned=owned, fresh=fresh)
                watching.add(name, arr, len(self.store.block_sizes) - 1)
            progress.advance(rows)
        watching.finish()
        self.passes.early = watching
        self.accept_inputs(self.store.block_sizes, list(zip(lows, highs, strict=True)))

    def _early_statistics(self) -> early.EarlyStatistics:
        """The ops whose statistics the loading pass gathers (:mod:`.early`): a single
        variable input that is a graph input, every other input an initializer, the min/max
        statistic, no bias correction, PTQ."""
        watching = early.EarlyStatistics()
        if not early.ENABLED or self.strategy.flows_raw:
            return watching
        inputs = set(self.input_names)
        registry = quantized_registry()
        for node in self.nodes:
            cls = registry.get(node.op_type)
            if cls is None or getattr(cls, "fused_extremes", None) is None:
                continue
            variable = [n for n in node.inputs if n in inputs]
            others = [n for n in node.inputs if n and n not in inputs]
            if len(variable) != 1 or len(node.outputs) != 1:
                continue
            if any(n not in self.constants for n in others):
                continue  # a weight computed by the graph: known only when its node is folded
            calib = self.plan.for_op(node.name)
            method = calib.activations
            if calib.bias_correction or (
                method is not None and method.name not in fused_stats.SERVES_STATISTICS
            ):
                continue
            name = variable[0]
            self.tensors.setdefault(name, WalkTensor("input", producers={name}))
            try:
                op = self._build_op(node, variable)
            except Exception:  # the node's visit builds it again and reports what is wrong
                continue
            watching.watch(op, name, node.outputs[0])
        return watching

    def accept_inputs(self, block_sizes: list[int], ranges: list[tuple[Any, Any]]) -> None:
        """Take the graph inputs: the rows of every block (in row order) and each input's
        whole-set ``(min, max)`` over them (None, None when it holds no value).

        Raises:
            GraphInputError: no rows at all.
        """
        if self.store.block_sizes is not block_sizes:
            self.store.block_sizes[:] = block_sizes
        if self.store.progress is None:
            self.store.progress = Progress(0, False)
        if not self.store.block_sizes:
            raise GraphInputError("the calibration data is empty; give at least one row per input")
        for name, (lo, hi) in zip(self.input_names, ranges, strict=True):
            self.input_stats[name] = (lo, hi)
            self.tensors[name] = WalkTensor("input", vmin=lo, vmax=hi, producers={name})

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
        if self.plan.for_op(node.name).bias_correction and node.op_type in WEIGHT_OPS:
            self.passes.bias_corrected.add(out)
        method = self.plan.for_op(node.name).activations
        if method is not None and not type(op).quantize_inputs_with_model_outputs_precision:
            # shape ops (Reshape, Flatten, Concat, ...) move their producers' values, already
            # on the producers' grids: they keep min/max
            self.passes.methods[out] = method
        producers: set[str] = set()
        for name in variable:
            producers |= self.tensors[name].producers
        self.tensors[out] = WalkTensor("raw", producers=producers if op.can_fuse() else {out})
        for n in self.nodes[node.index + 1 :]:
            uses = sum(1 for i in n.inputs if i == out)
            self.tensors[out].consumers_left += uses
            if uses and self._reads_presence(n):
                # its table path reads which integers occur: mark them as they are stored
                self.tensors[out].track_presence = not self.strategy.flows_raw
        guess = ahead.guess_for(self, node)
        if guess is not None:
            self.passes.ahead.arm(out, guess)
        self._calibrate_op(op, variable, out)
        self.passes.ahead.finish(out)
        self.tables.clear()  # one op at a time: its tables and buffers are done
        self.quant_layers[out] = (tuple(variable), op)
        for name in variable:
            self.store.release(name)
        if self.tensors[out].consumers_left == 0:
            self.store.data.drop(out)

    def _reads_presence(self, node: GraphNode) -> bool:
        """Whether the table path of ``node`` reads which integers of its input occur: any
        op calibrated by table, but a monotone one (``monotone_table``) whose own output no
        such op reads (its extremes are at the ends of the input's range, and the view it
        leaves carries no marks on)."""
        registry = quantized_registry()
        cls = registry.get(node.op_type)
        if not getattr(cls, "calibrate_by_table", False):
            return False
        if not getattr(cls, "monotone_table", False):
            return True
        out = node.outputs[0] if node.outputs else None
        return any(
            out in n.inputs and self._reads_presence(n) for n in self.nodes[node.index + 1 :]
        )

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

    def _op_strategy(self, node: GraphNode) -> tuple[QuantizationStrategy, Any]:
        """The strategy (with the op's n_bits) and rounding threshold of one op."""
        names = (node.name, *node.outputs[:1])
        rounding = self.rounding_threshold_bits
        if self.rounding_per_op is not None:
            rounding = self.rounding_per_op.value_for(names)
        if self.n_bits_per_op is None:
            return self.strategy, rounding
        bits = self.n_bits_per_op.value_for(names)
        if bits == self.bits:
            return self.strategy, rounding
        strategy = copy.copy(self.strategy)
        strategy.bits = bits
        return strategy, rounding

    def _build_op(self, node: GraphNode, variable: list[str]) -> Any:
        strategy, rounding = self._op_strategy(node)
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
            weights = self._weight_method(node, idx) if cls.must_quantize_input(idx) else None
            if weights is not None:
                constants[idx] = strategy.process_weights(
                    value,
                    name,
                    weights,
                    self._channel_axis(node, np.ndim(value)),
                    asymmetric=self.plan.for_op(node.name).per_channel == "asymmetric",
                )
            elif cls.must_quantize_input(idx):
                constants[idx] = strategy.process_initializer(value, name)
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
            strategy.bits.model_outputs
            if cls.quantize_inputs_with_model_outputs_precision
            else strategy.bits.op_inputs
        )
        kwargs: dict[str, Any] = {}
        if cls.is_mixing:
            kwargs["rounding_threshold_bits"] = rounding
        op = cls(
            strategy.bits.model_outputs,
            node.name,
            int_input_names=int_input_names,
            constant_inputs=constants,
            input_quant_opts=strategy.input_quant_opts(n_in, signed),
            **kwargs,
            **node.attrs,
        )
        op.produces_graph_output = node.outputs[0] in self.output_names
        if self.strategy.flows_raw:
            op.error_tracker = []  # QAT: inputs re-quantized with QAT options
            # (docs/contract.md §4.5)
        self.node_inputs[node.outputs[0]] = tuple(node.inputs)
        return op

    def _weight_method(self, node: GraphNode, idx: int) -> Any:
        """The statistic of the weights (input 1) of a Gemm/MatMul/Conv, None for min/max."""
        calib = self.plan.for_op(node.name)
        if idx != 1 or node.op_type not in WEIGHT_OPS:
            return None
        if calib.weights is None and calib.per_channel:
            return StatisticSpec("minmax")
        return calib.weights

    def _channel_axis(self, node: GraphNode, rank: int) -> int | None:
        """The output-channel axis of per-channel weights (None: per tensor)."""
        if not self.plan.for_op(node.name).per_channel or rank < 2:
            return None
        if node.op_type == "Conv":
            return 0
        if node.op_type == "Gemm":
            return 0 if node.attrs.get("transB", 0) else rank - 1
        return rank - 1  # MatMul: (..., k, O)

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


def _block_range(arr: np.ndarray, name: str) -> tuple[Any, Any]:
    """The min and max of one block of graph input ``name``: numpy's (its scalars, its pick
    between signed zeros), read once by the native scan for float32/float64 blocks; a
    non-finite block gives numpy's min and max, which ``check_finite`` names as before."""
    if arr.dtype in (np.float32, np.float64):
        try:
            return quant_kernels.min_max(arr, name)
        except NonFiniteError:
            pass
    return arr.min(), arr.max()


def quantize_module(
    model: onnx.ModelProto,
    data: Any,
    n_bits: Any = 8,
    rounding_threshold_bits: Any = None,
    import_qat: bool = False,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    memory_budget: int | None = None,
    verbose: bool = False,
    preprocess: Callable[..., tuple[np.ndarray, ...]] | None = None,
    calibration: Any = None,
) -> dict[str, Any]:
    """Run the calibration walk (docs/contract.md §4.2) and return what QuantizedModule needs.

    Args:
        model: the ONNX model (pre-processed).
        data: calibration data: an array, a tuple of arrays, or an iterable of batches.
        n_bits: int or dict (docs/contract.md §4.1), or a per-op mapping (docs/cost.md).
        rounding_threshold_bits: for every mixing op (docs/contract.md §2.4), or per op.
        import_qat: use the QAT importer instead of PTQ.
        block_rows: rows per evaluation block.
        memory_budget: bytes of intermediates kept in memory before spilling to disk (None:
            ``streaming.auto_memory_budget``).
        verbose: show a progress bar.
        preprocess: a function applied to each input block (ONNX pre-processing).
        calibration: the statistics choosing the ranges (docs/calibration.md).

    Returns:
        input_names, output_names, quant_layers_dict, input_quantizers, n_rows, spilled,
        spilled_bytes.
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
        n_bits_per_op=n_bits_per_op(n_bits),
        calibration=calibration,
    )
    return calibrator.run(data)
