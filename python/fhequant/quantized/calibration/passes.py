"""The passes that calibrate one op over the row blocks (docs/contract.md §4.2, decision 4).

:meth:`OpPasses.calibrate` picks the path of an op:

* the table path when it applies (:class:`~fhequant.quantized.calibration.tables.TablePaths`);
* one block: the reference walk on the whole set (:meth:`OpPasses.whole`);
* several blocks (:meth:`OpPasses.streamed`): a statistics pass (global min/max of the float op,
  fused in native kernels when only they are needed), or, for ops whose calibration is not a
  min/max reduction, ``op.calibrate`` on the concatenated inputs; then one output pass per
  rounding point (its accumulator range gathered by a ``RoundingRangeObserver``) and a last one
  that keeps the quantized output for the consumers.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from fhequant.errors import NonFiniteError
from fhequant.kernels.quant import NARROW_INTS
from fhequant.quantization import (
    QuantizationOptions,
    QuantizedArray,
    StatisticSpec,
    UniformQuantizer,
)
from fhequant.quantized import fused_stats
from fhequant.quantized.calibration import traits
from fhequant.quantized.calibration.ahead import StatisticsAhead
from fhequant.quantized.calibration.bias import correct_bias
from fhequant.quantized.calibration.early import EarlyStatistics
from fhequant.quantized.calibration.engine import OutputRange, PassPlan, union_uvalues
from fhequant.quantized.calibration.store import (
    WalkStore,
    WalkTensor,
    native_dequant_params,
    requantizes_to_itself,
)
from fhequant.quantized.calibration.tables import TablePaths
from fhequant.quantized.exec import ClearBackend, Executor, RoundingRangeObserver, use_executor
from fhequant.quantized.finite import check_finite
from fhequant.quantized.fused_stats import fused_statistics
from fhequant.quantized.graph import use_split_independent_impl
from fhequant.quantized.ops.base import compute_bits_precision
from fhequant.quantized.ops.inputs import reads_as_quantized

__all__ = ["KEEP_PRODUCTS", "QUANTIZE_IN_KERNEL", "OpPasses", "union_uvalues"]

#: The output passes let a hidden Gemm/MatMul/Conv quantize its output inside its fused
#: native kernel (the float64 result is never written; same integers). Set to False to
#: quantize the written float64 result instead.
QUANTIZE_IN_KERNEL = True
#: The statistics pass of a hidden Gemm/MatMul computes its integer product, filters the float
#: extremes with it and keeps it for the output pass, which then only rescales and quantizes
#: it (``fused_stats.Products``; same integers); past the products' share of
#: ``memory_budget`` the product still filters and is dropped. Off by default: once the
#: float32 filter ran on AVX2 and the epilogue was vectorised, the benchmark no longer
#: measured a gain (docs/calibration-throughput.md, sixth round); set to True to use it.
KEEP_PRODUCTS = False


def _output_scope() -> Any:
    """The executor of an output pass whose ops' outputs are only read as integers."""
    if not QUANTIZE_IN_KERNEL:
        return contextlib.nullcontext()
    return use_executor(Executor(ClearBackend(), quantize_outputs=True))


class OpPasses:
    """Calibrates the ops of one walk on the blocks of its store.

    Args:
        store: the walk's tensors and blocks.
        tables: the walk's table paths.
        flows_raw: QAT import: the raw float output flows downstream.
        input_stats: the whole-set (min, max) of every graph input.
    """

    def __init__(
        self,
        store: WalkStore,
        tables: TablePaths,
        flows_raw: bool,
        input_stats: dict[str, tuple[Any, Any]],
    ) -> None:
        self.store = store
        self.tables = tables
        self.flows_raw = flows_raw
        self.input_stats = input_stats
        self._input_quant_cache: dict[tuple[str, Any], Any] = {}
        #: The statistic of each op output that is not min/max (by output tensor name).
        self.methods: dict[str, StatisticSpec] = {}
        #: The outputs of the Gemm/MatMul/Conv whose bias is corrected, and how the walk's
        #: strategy quantizes a constant (the corrected bias).
        self.bias_corrected: set[str] = set()
        self.process_initializer: Any = None
        #: The statistics the walk gathered while loading the graph inputs.
        self.early = EarlyStatistics()
        #: The statistics gathered during a producer's output pass (:mod:`.ahead`).
        self.ahead = StatisticsAhead()

    def calibrate(self, op: Any, variable: list[str], out: str) -> None:
        """Calibrate ``op`` (variable inputs ``variable``) and store its output ``out``."""
        if out in self.bias_corrected:
            correct_bias(self, op, variable)
        if self.table_served(out) and self.tables.calibrate_by_table(op, variable, out):
            return
        with use_split_independent_impl(op):
            if self.store.n_blocks == 1:
                self.whole(op, variable, out)
            else:
                self.streamed(op, variable, out)

    def plan(self, op: Any, variable: list[str], out: str) -> PassPlan:
        """Which passes calibrate ``op`` (this walk's and other engines', docs of
        :mod:`fhequant.quantized.calibration.engine`)."""
        tensors = self.store.tensors
        return PassPlan(
            table=self.table_served(out) and self.tables.applies(op, variable),
            statistics=traits.has_default_calibration(op),
            rounding=bool(getattr(op, "is_mixing", False))
            and op.rounding_threshold_bits is not None,
            releases=tuple(
                n
                for n in dict.fromkeys(variable)
                if tensors[n].consumers_left - variable.count(n) <= 0
            ),
        )

    def table_served(self, out: str) -> bool:
        """Whether the statistic of ``out`` lets the table path calibrate its op."""
        method = self.methods.get(out)
        return method is None or method.name in self.tables.SERVES_STATISTICS

    @staticmethod
    def calibrate_rounding_point(op: Any, pending: str, lo: int, hi: int) -> None:
        """Set the ``lsbs_to_remove`` of rounding point ``pending`` from the global range
        ``[lo, hi]`` of its accumulator (over all rows)."""
        target = int(op.rounding_threshold_bits["n_bits"])
        width = int(compute_bits_precision(lo, hi))
        op.lsbs_to_remove[pending] = max(0, width - target)

    def calibrate_whole(self, op: Any, variable: list[str], out: str, floats: list[Any]) -> Any:
        """``op.calibrate`` on the whole float inputs (all rows), finiteness checked; returns
        the raw result."""
        self._check_inputs_finite(op, variable, floats)
        return self._op_calibrate(op, out, floats)

    # --- the calibration inputs of an op -----------------------------------------------

    def _narrow_stored_input(
        self, name: str, b: int, op: Any, tensor: WalkTensor, q: UniformQuantizer
    ) -> QuantizedArray | None:
        """Block ``b`` of quant tensor ``name`` (``tensor``, of quantizer ``q``) as stored in
        int8/int16, for an op that reads its inputs narrow (``narrow_inputs``) when it would
        re-quantize them to themselves: the store's own array, not widened to int64 (the op
        only reads it; a shape op copies what it moves). None otherwise."""
        if not op.narrow_inputs:
            return None
        stored = self.store.stored_block(name, b)
        if stored.dtype not in NARROW_INTS or not requantizes_to_itself(q, tensor, stored):
            return None
        return QuantizedArray.from_narrow_quantizer(q, stored)

    def calibration_qa(self, name: str, b: int, op: Any) -> Any:
        """The calibration QuantizedArray of a variable input (docs/contract.md §4.2 step 1)."""
        store = self.store
        tensor = store.tensors[name]
        if tensor.kind == "quant" and not tensor.stored_floats:
            q = tensor.quantizer
            assert q is not None
            requantized = self.tables.requantized_input(name, b, op)
            if requantized is not None:
                return requantized
            narrow = self._narrow_stored_input(name, b, op, tensor, q)
            if narrow is not None:
                return narrow
            ints = store.int_block(name, b)
            if requantizes_to_itself(q, tensor, ints):
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
                    copy_values=store.holds(name, b, wide),
                    # the float values only when the op reads them (same bits, once)
                    defer=True,
                )
        data = store.float_block(name, b)
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
        ref = self.input_reference(name, opts, data.dtype)
        # the block is only read while the op runs: no copy, integers computed on first read
        return QuantizedArray(
            opts.n_bits,
            data,
            options=opts,
            stats=ref.quant_stats,
            params=ref.quant_params,
            copy_values=False,
            defer=True,
        )

    def input_reference(self, name: str, opts: QuantizationOptions, dtype: Any) -> Any:
        """A quantizer with the whole-set statistics of a graph input under ``opts``."""
        key = (name, repr(opts.dump_dict()))
        cached = self._input_quant_cache.get(key)
        if cached is None:
            lo, hi = self.input_stats[name]
            ends = np.array([lo, hi], dtype=dtype)
            cached = QuantizedArray(opts.n_bits, ends, options=opts).quantizer
            self._input_quant_cache[key] = cached
        return cached

    # --- the passes ---------------------------------------------------------------------

    def whole(self, op: Any, variable: list[str], out: str) -> None:
        """The reference walk on the whole set (one block).

        Ops with the default calibration get their output quantizer from the min/max of the
        float result (the numbers of QA(n_bits, raw), without its unused uvalues sort).
        """
        raw_blocks: list[Any] | None
        products = self.products_for(op, variable, out)
        if traits.has_default_calibration(op):
            raw_blocks = self.statistics(op, variable, out, products)
        else:
            floats = [self.store.float_block(n, 0) for n in variable]
            raw = self.calibrate_whole(op, variable, out, floats)
            raw_blocks = [raw] if self.flows_raw else None
        qas = [self.calibration_qa(n, 0, op) for n in variable]
        mixing = bool(getattr(op, "is_mixing", False))
        acc = None if products is None else products.take(0)
        with _output_scope():
            if acc is None:
                quant = op.q_impl(*qas, calibrate_rounding=mixing)
            else:
                quant = op.q_impl(*qas, calibrate_rounding=mixing, accumulator=acc)
        self.store.store_output(out, 0, quant, raw_blocks[0] if raw_blocks is not None else None)
        traits.finish(op, quant)

    def streamed(self, op: Any, variable: list[str], out: str) -> None:
        """Statistics (or concatenated) pass, then output passes until every rounding point
        is calibrated."""
        store = self.store
        plan = self.plan(op, variable, out)
        raw_blocks: list[Any] | None = None
        products = self.products_for(op, variable, out, plan)
        if not plan.statistics:
            raw_blocks = self.concatenated(op, variable, out)
        else:
            raw_blocks = self.statistics(op, variable, out, products)
        rounding = plan.rounding
        while True:
            # each pass gathers the accumulator range of the next uncalibrated rounding point
            recorder = RoundingRangeObserver(op) if rounding else None
            scope = (
                use_executor(Executor(ClearBackend(), recorder))
                if recorder is not None
                else _output_scope()
            )
            store.reset_output(out)
            last: Any = None
            blocks = (
                store.last_block(f"{op.op_instance_name} output parameters")
                if recorder is None and self.output_unread(op, variable, out)
                else store.blocks(f"{op.op_instance_name} outputs")
            )
            # the only output pass (no rounding point to calibrate): the inputs whose last
            # consumer this op is are read here for the last time, block by block
            finished = [
                stored
                for name in (plan.releases if recorder is None and not self.flows_raw else ())
                if (stored := store.recyclable(name)) is not None
            ]
            # the last output pass (no rounding point): a consumer's statistics may be
            # gathered on its blocks as they are stored (:mod:`.ahead`)
            ahead = self.ahead if recorder is None else None
            with scope:
                for b in blocks:
                    qas = [self.calibration_qa(n, b, op) for n in variable]
                    acc = None if products is None else products.take(b)
                    last = op.q_impl(*qas) if acc is None else op.q_impl(*qas, accumulator=acc)
                    raw = raw_blocks[b] if raw_blocks is not None else None
                    for stored in finished:
                        store.data.recycle(stored, b)
                    ints = store.store_output(out, b, last, raw)
                    if ahead is not None and ints is not None:
                        ahead.feed(out, b, ints)
            if recorder is None or recorder.pending is None:
                break
            # One more rounding point calibrated: its accumulator range is global now.
            assert recorder.lo is not None and recorder.hi is not None
            self.calibrate_rounding_point(op, recorder.pending, recorder.lo, recorder.hi)
        traits.finish(op, last)

    def products_for(
        self, op: Any, variable: list[str], out: str, plan: PassPlan | None = None
    ) -> fused_stats.Products | None:
        """Where the statistics pass keeps the integer products of a hidden Gemm/MatMul for
        its output pass (:data:`KEEP_PRODUCTS`), or None (``plan``: the op's pass plan when
        the caller has it, else computed here once the cheap checks pass).

        Only when the output pass reads exactly the stored integers of the input, with the
        producer's scale and zero point (no re-quantization table, or one that maps every
        integer to itself; integers inside the producer's clip range; the op's input options
        those of the producer), quantizes in
        the fused kernel and calibrates no rounding; and only the products that fit the
        walk's memory budget are kept (the other blocks compute theirs again).
        """
        if not (KEEP_PRODUCTS and QUANTIZE_IN_KERNEL and fused_stats.ENABLED):
            return None
        if self.flows_raw or len(variable) != 1 or not hasattr(op, "integer_weights"):
            return None
        plan = self.plan(op, variable, out) if plan is None else plan
        if plan.rounding or not plan.statistics or op.produces_graph_output:
            return None
        if out in self.methods or op.spec().raw_output or traits.clips_percentiles(op):
            return None
        name = variable[0]
        tensor = self.store.tensors[name]
        q = tensor.quantizer
        if tensor.kind != "quant" or tensor.stored_floats or q is None:
            return None
        if self.tables.requantizes(name, op):
            if not self.tables.requantizes_to_same(name, op):
                return None
        elif not reads_as_quantized(op.input_quant_opts, q):
            return None
        if not requantizes_to_itself(q, tensor, np.zeros(1, dtype=np.int64)):
            return None
        return fused_stats.Products(self.store.data.memory_budget)

    def output_unread(self, op: Any, variable: list[str], out: str) -> bool:
        """Whether the output pass of ``op`` may run on one block instead of all of them.

        A Gemm/MatMul/Conv with constant weights whose output is a graph output that no op
        reads, without rounding to calibrate, keeps nothing from its output pass but the
        parameters of its raw accumulator (``traits.finish``), which do not depend on the
        rows. Its blocks could only raise the integer overflow check, so the shortcut is
        taken only when no input can overflow: K·max|a|·max|w - z_w| <= 2^62 with |a| bounded
        by the clip range of every quantizer its integers come from.
        """
        store = self.store
        if (
            self.flows_raw
            or store.n_blocks < 2
            or not op.produces_graph_output
            or store.tensors[out].consumers_left > 0
            or type(op).fused_extremes is None
            or len(variable) != 1
            or getattr(op, "rounding_threshold_bits", None) is not None
        ):
            return False
        weights = op.constant_inputs.get(1)
        if not isinstance(weights, QuantizedArray):
            return False
        w = np.asarray(weights.qvalues)
        z_w = weights.quantizer.zero_point
        if w.dtype.kind not in "iu" or w.size == 0 or np.ndim(z_w) != 0:
            return False
        if float(z_w) != int(z_w):
            return False
        quantizers = [op.input_quant_opts]
        producer = store.tensors[variable[0]].quantizer
        if producer is not None:
            if producer.no_clipping:
                return False
            quantizers.append(producer)
        bits = max(int(q.n_bits) for q in quantizers)
        c = max(abs(int(w.max()) - int(z_w)), abs(int(w.min()) - int(z_w)))
        # w.size bounds K (the terms of one output) for every layout
        return int(w.size) * (1 << (bits + 1)) * c <= 1 << 62

    def concatenated(self, op: Any, variable: list[str], out: str) -> list[Any] | None:
        """Exact fallback for ops whose calibration is not a min/max reduction."""
        store = self.store
        parts: list[list[Any]] = [[] for _ in variable]
        for b in store.blocks(f"{op.op_instance_name} (gathering inputs)"):
            for i, name in enumerate(variable):
                parts[i].append(store.float_block(name, b))
        floats = [np.concatenate(p, axis=0) for p in parts]
        raw = self.calibrate_whole(op, variable, out, floats)
        if not self.flows_raw:
            return None
        starts = np.cumsum([0, *store.block_sizes])
        return [raw[starts[i] : starts[i + 1]] for i in range(store.n_blocks)]

    def statistics(
        self,
        op: Any,
        variable: list[str],
        out: str,
        products: fused_stats.Products | None = None,
    ) -> list[Any] | None:
        """Global min/max of the float op over all blocks; sets the output quantizer.

        BatchNorm with per-channel parameters first clips its output to the 0.1 and 99.9
        percentiles of the whole tensor (docs/contract.md §3.7); they are computed exactly from
        the smallest and largest 0.1 % of the values (:mod:`fhequant.quantized.percentile`).
        """
        method = self.methods.get(out)
        if method is not None:
            return self.method_statistics(op, variable, out, method)
        store = self.store
        keep: list[Any] | None = [] if self.flows_raw else None
        if keep is None and not op.spec().raw_output and not traits.clips_percentiles(op):
            # only the min/max are used: the native kernels need not materialise the result
            fused = self.early.take(out)
            if fused is None and products is None:
                fused = self.ahead.take(out, op, variable, store)
            if fused is None:
                fused = self.moved_extremes(op, variable)
            if fused is None:
                fused = fused_statistics(store, op, variable, out, products)
            if fused is not None:
                op._set_output_quantizer(fused)
                return None
        stat = OutputRange(op, out, sum(store.block_sizes), keep is not None)
        for b in store.blocks(f"{op.op_instance_name} statistics"):
            raw = stat.update(op, [store.float_block(n, b) for n in variable])
            if keep is not None:
                keep.append(raw)
        stat.finalize(op)
        return keep

    def moved_extremes(self, op: Any, variable: list[str]) -> np.ndarray | None:
        """The ``[min, max]`` of the float result of a shape op that moves every value of its
        one variable input exactly once (``moves_every_value``: Reshape, Flatten, Transpose,
        Squeeze, Unsqueeze), when the input's stored integers give them: their float values
        are the dequantized integers, monotone in them (scalar float64 scale > 0), so the
        extremes are the dequantized ends of the integer range the store already merged
        (the numbers the materialised pass takes). None otherwise."""
        if not getattr(type(op), "moves_every_value", False) or len(variable) != 1:
            return None
        tensor = self.store.tensors[variable[0]]
        q = tensor.quantizer
        if tensor.kind != "quant" or tensor.stored_floats or q is None or tensor.qmin is None:
            return None
        if not native_dequant_params(q) or not q.scale > 0 or tensor.vmin is None:
            return None
        ends = np.array([tensor.vmin, tensor.vmax])
        return ends if ends.dtype == np.float64 else None

    def method_statistics(
        self, op: Any, variable: list[str], out: str, method: StatisticSpec
    ) -> list[Any] | None:
        """The statistics pass with a calibration statistic other than min/max (PTQ).

        The float op runs on every block (the fused kernels serve only
        ``fused_stats.SERVES_STATISTICS``), each block updates the tensor's statistic, and
        its ``finalize`` range sets the output quantizer. BatchNorm's percentile clip is
        replaced by the statistic.
        """
        store = self.store
        if op.spec().raw_output or method.name in fused_stats.SERVES_STATISTICS:
            del self.methods[out]
            return self.statistics(op, variable, out)
        stat: Any = None
        for b in store.blocks(f"{op.op_instance_name} statistics ({method.name})"):
            floats = [store.float_block(n, b) for n in variable]
            prepared = op._prepare_inputs_with_constants(
                *floats, calibrate=True, quantize_actual_values=False
            )
            arr = np.asarray(op.call_impl(*prepared, **op.attrs))
            if arr.size == 0:
                continue
            check_finite(
                arr.min(), arr.max(), out, f"op {op.op_instance_name!r} ({type(op).__name__})"
            )
            if stat is None:
                per_row = arr.size // max(arr.shape[0], 1) if arr.ndim else 1
                stat = method.make(per_row * sum(store.block_sizes))
            stat.update(arr)
        if stat is None:  # no value at all: the min/max pass reports it as before
            del self.methods[out]
            return self.statistics(op, variable, out)
        op._set_output_quantizer(stat.finalize(QuantizationOptions(op.n_bits)))
        return None

    # --- finiteness ---------------------------------------------------------------------

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

    @staticmethod
    def _check_inputs_finite(op: Any, names: list[str], floats: list[Any]) -> None:
        for name, values in zip(names, floats, strict=True):
            arr = np.asarray(values)
            if arr.size and np.issubdtype(arr.dtype, np.floating):
                check_finite(arr.min(), arr.max(), name, f"input of op {op.op_instance_name!r}")

    @staticmethod
    def _check_output_finite(op: Any, out: str, raw: Any) -> None:
        arr = np.asarray(raw)
        if arr.size and np.issubdtype(arr.dtype, np.floating):
            check_finite(
                arr.min(), arr.max(), out, f"op {op.op_instance_name!r} ({type(op).__name__})"
            )
