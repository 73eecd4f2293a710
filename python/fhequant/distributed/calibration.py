"""Distributed calibration: the calibration walk as map/reduce passes over Dask partitions.

:class:`DaskCalibrator` is the local :class:`~fhequant.quantized.calibration.ModuleCalibrator`
(same graph walk, op construction, strategies, consumer counts and module input quantizers)
whose blocks live on the Dask workers. The client keeps the ops and the metadata of the walk
tensors (kinds, quantizers, global ranges); every pass of an op is a task per partition
(:mod:`fhequant.distributed.partitions`) returning a small partial statistic, and the client
folds the partials in partition order (:mod:`fhequant.distributed.merge`) and decides what the
local walk decides: the output quantizer, each rounding point's ``lsbs_to_remove``, the table
of an element-wise op. Output passes return new partitions holding the op's quantized output
on the workers; the client holds only their futures (the tensors are never gathered).

The partitions are re-chunked on multiples of ``batch_size`` (anchored at row 0), so they hold
the blocks of the local walk and the module is bit-identical to
``build_quantized_module(model, x.compute(), batch_size=...)`` whatever the partitioning.
The one exception to "never gathered": an op whose calibration is not a min/max reduction
(Div's divider, ...) is calibrated on its whole float inputs, gathered on the client, as the
local walk concatenates them. QAT import (``import_qat=True``) is not distributed yet.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from fhequant.distributed import partitions as parts_mod
from fhequant.distributed._dask import (
    DaskData,
    aligned_arrays,
    is_dask,
    require_dask,
    resolve_client,
)
from fhequant.distributed.merge import (
    merge_extremes,
    merge_presence,
    merge_rounding_ranges,
    merge_tensor_ranges,
)
from fhequant.distributed.partitions import OpPayload
from fhequant.errors import ConfigurationError, GraphInputError
from fhequant.quantized.calibration import ModuleCalibrator, traits
from fhequant.quantized.calibration.passes import OpPasses
from fhequant.quantized.calibration.store import WalkTensor
from fhequant.quantized.calibration.tables import element_table
from fhequant.quantized.inputs import input_checker
from fhequant.quantized.n_bits import resolve_n_bits
from fhequant.quantized.strategies import PTQStrategy

__all__ = ["DaskCalibrationEngine", "DaskCalibrator"]


def _fold(merge: Callable[[Any, Any], Any], items: list[Any]) -> Any:
    return functools.reduce(merge, items)


class DaskCalibrator:
    """The calibration walk on Dask partitions (PTQ).

    It runs a local :class:`~fhequant.quantized.calibration.ModuleCalibrator` (same graph
    walk, op construction, strategies, consumer counts and module input quantizers) through
    its public engine interface (:mod:`fhequant.quantized.calibration.engine`): ``walk`` with
    this driver's input loading and op calibration.

    Args:
        model: the (pre-processed) ONNX model.
        arrays: one Dask array per model input, row chunks aligned on ``block_rows``.
        client: the ``distributed.Client``.
        n_bits, rounding_threshold_bits, block_rows: as for ``quantize_module``.
        check: validates each partition's raw inputs against the model (or None).
        preprocess: ONNX pre-processing of each block (or None).
    """

    def __init__(
        self,
        model: Any,
        arrays: tuple[Any, ...],
        client: Any,
        n_bits: Any,
        rounding_threshold_bits: Any,
        block_rows: int,
        check: Any = None,
        preprocess: Any = None,
    ) -> None:
        self.walker = ModuleCalibrator(
            model,
            PTQStrategy(resolve_n_bits(n_bits)),
            rounding_threshold_bits=rounding_threshold_bits,
            block_rows=block_rows,
            preprocess=preprocess,
        )
        self.arrays = arrays
        self.client = client
        self.check = check
        self.parts: list[Any] = []  # futures of the partitions, in row order
        self.passes = _DaskPasses(self)

    @property
    def tensors(self) -> dict[str, WalkTensor]:
        return self.walker.tensors

    def run(self) -> dict[str, Any]:
        """Calibrate every op; returns what ``quantize_module`` returns."""
        try:
            return self.walker.walk(self._load_inputs, self.passes.calibrate)
        finally:
            self.parts = []  # releases the partitions on the workers

    # --- map / reduce ---------------------------------------------------------------------

    def map_parts(self, fn: Any, payload: bytes) -> list[Any]:
        """One task per partition; futures of the results (in partition order)."""
        return [self.client.submit(fn, part, payload) for part in self.parts]

    def gather(self, futures: list[Any]) -> list[Any]:
        return list(self.client.gather(futures))

    def partials(self, new_parts: list[Any]) -> list[Any]:
        """The partial statistics left on new partitions."""
        return self.gather([self.client.submit(parts_mod.partial_of, p) for p in new_parts])

    def payload(self, op: Any, variable: list[str], out: str, **extra: Any) -> bytes:
        names = dict.fromkeys([*variable, out])
        meta = {n: self.tensors[n] for n in names}
        return OpPayload(
            op,
            list(variable),
            out,
            meta,
            dict(self.walker.input_stats),
            self.walker.strategy.flows_raw,
            total_rows=sum(self.walker.store.block_sizes),
            **extra,
        ).dumps()

    # --- graph inputs --------------------------------------------------------------------

    def _load_inputs(self) -> None:
        names = self.walker.input_names
        if len(self.arrays) != len(names):
            raise GraphInputError(
                f"the model takes {len(names)} input(s) {names} but the calibration data "
                f"holds {len(self.arrays)}; give a tuple with one array per input"
            )
        require_dask()
        import dask

        chunks = [a.to_delayed().ravel() for a in self.arrays]
        load = dask.delayed(parts_mod.load_partition, pure=True)
        tasks = [
            load(
                i,
                tuple(c[i] for c in chunks),
                tuple(names),
                self.walker.block_rows,
                self.check,
                self.walker.preprocess,
            )
            for i in range(len(chunks[0]))
        ]
        self.parts = list(self.client.compute(tasks))
        loaded = self.partials(self.parts)
        ranges = []
        for i in range(len(names)):
            ext = _fold(merge_extremes, [p.extremes[i] for p in loaded])
            ranges.append((ext.lo, ext.hi))
        self.walker.accept_inputs([s for p in loaded for s in p.block_sizes], ranges)


class _DaskPasses:
    """``OpPasses.calibrate`` as passes over the partitions, on the plan of ``OpPasses.plan``."""

    def __init__(self, cal: DaskCalibrator) -> None:
        self.cal = cal

    def calibrate(self, op: Any, variable: list[str], out: str) -> None:
        cal = self.cal
        plan = cal.walker.passes.plan(op, variable, out)
        drops = plan.releases
        if plan.table and self._by_table(op, variable, out, drops):
            return
        if plan.statistics:
            self._statistics(op, variable, out)
        else:
            self._concatenated(op, variable, out)
        while True:
            payload = cal.payload(op, variable, out, drops=drops, rounding=plan.rounding)
            new_parts = cal.map_parts(parts_mod.output_pass, payload)
            partials = cal.partials(new_parts)
            seen = _fold(merge_rounding_ranges, [p.rounding for p in partials])
            if not plan.rounding or seen.pending is None:
                break
            # one more rounding point calibrated on the global range of its accumulator
            assert seen.lo is not None and seen.hi is not None
            OpPasses.calibrate_rounding_point(op, seen.pending, seen.lo, seen.hi)
        cal.parts = new_parts
        self._take_output(out, partials)
        last = partials[-1].last_quantizer
        if op.produces_graph_output and last is not None:  # traits.finish on the last block
            op.output_quant_stats = last.quant_stats
            op.output_quant_params = last.quant_params

    def _take_output(self, out: str, partials: list[Any]) -> None:
        tensor = self.cal.tensors[out]
        final = partials[-1]
        tensor.kind, tensor.quantizer = final.kind, final.quantizer
        tensor.stored_floats = final.stored_floats
        ranges = _fold(merge_tensor_ranges, [p.ranges for p in partials])
        tensor.vmin, tensor.vmax = ranges.vmin, ranges.vmax
        tensor.qmin, tensor.qmax = ranges.qmin, ranges.qmax

    def _statistics(self, op: Any, variable: list[str], out: str) -> None:
        """``OpPasses.statistics``: the partitions' output ranges merged in row order, then
        finalized (global min/max; BatchNorm: clipped to its percentiles)."""
        cal = self.cal
        if op.spec().raw_output:
            return
        payload = cal.payload(op, variable, out)
        partials = cal.gather(cal.map_parts(parts_mod.statistics_pass, payload))
        _fold(lambda a, b: a.merge(b), partials).finalize(op)

    def _concatenated(self, op: Any, variable: list[str], out: str) -> None:
        """``op.calibrate`` on the whole float inputs (gathered, in row order)."""
        cal = self.cal
        payload = cal.payload(op, variable, out)
        per_part = cal.gather(cal.map_parts(parts_mod.gather_floats, payload))
        floats = [
            np.concatenate([block for part in per_part for block in part[i]], axis=0)
            for i in range(len(variable))
        ]
        cal.walker.passes.calibrate_whole(op, variable, out, floats)

    def _by_table(self, op: Any, variable: list[str], out: str, drops: tuple[str, ...]) -> bool:
        """``TablePaths.calibrate_by_table`` with the presence mask merged over partitions."""
        cal = self.cal
        name = variable[0]
        tensor = cal.tensors[name]
        q = tensor.quantizer
        assert q is not None and tensor.qmin is not None and tensor.qmax is not None
        lo, size = tensor.qmin, tensor.qmax - tensor.qmin + 1
        payload = cal.payload(op, variable, out)
        seen = _fold(merge_presence, cal.gather(cal.map_parts(parts_mod.table_presence, payload)))
        built = element_table(op, q, seen, lo, size, out)
        if built is None:
            return False
        quant, table, qlo, qhi = built
        out_tensor = cal.tensors[out]
        out_tensor.kind, out_tensor.quantizer = "quant", quant.quantizer
        payload = cal.payload(op, variable, out, drops=drops, table=(lo, table, qlo, qhi))
        new_parts = cal.map_parts(parts_mod.table_output, payload)
        partials = cal.partials(new_parts)
        cal.parts = new_parts
        ranges = _fold(merge_tensor_ranges, [p.ranges for p in partials])
        out_tensor.vmin, out_tensor.vmax = ranges.vmin, ranges.vmax
        out_tensor.qmin, out_tensor.qmax = ranges.qmin, ranges.qmax
        traits.finish(op, quant)
        return True


class DaskCalibrationEngine:
    """The calibration engine ``build_quantized_module`` hands Dask collections to."""

    def claims(self, data: Any) -> bool:
        if isinstance(data, DaskData) or is_dask(data):
            return True
        return isinstance(data, tuple) and bool(data) and all(is_dask(d) for d in data)

    @staticmethod
    def _unwrap(data: Any) -> tuple[Any, Any]:
        return (data.data, data.client) if isinstance(data, DaskData) else (data, None)

    def first_sample(self, data: Any) -> Any:
        """The first rows (up to 100), computed: the dummy input of a torch export."""
        raw, _ = self._unwrap(data)
        arrays = aligned_arrays(raw, 1)
        first = tuple(np.asarray(a[: min(100, a.shape[0])].compute()) for a in arrays)
        return first[0] if len(first) == 1 else first

    def quantize_module(self, onnx_model: Any, data: Any, **kwargs: Any) -> dict[str, Any]:
        if kwargs.get("import_qat"):
            raise ConfigurationError(
                "QAT import (import_qat=True) does not calibrate on Dask data yet; give the "
                "calibration data as arrays"
            )
        if kwargs.get("calibration") is not None:
            raise ConfigurationError(
                "calibration methods other than min/max (calibration=...) do not run on Dask "
                "data yet; give the calibration data as arrays"
            )
        raw, client = self._unwrap(data)
        block_rows = kwargs["block_rows"]
        if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
            raise GraphInputError(f"batch_size must be a positive int, got {block_rows!r}")
        calibrator = DaskCalibrator(
            onnx_model,
            aligned_arrays(raw, block_rows),
            resolve_client(client),
            kwargs["n_bits"],
            kwargs["rounding_threshold_bits"],
            block_rows,
            check=input_checker(onnx_model) if kwargs.get("check_inputs") else None,
            preprocess=kwargs.get("preprocess"),
        )
        return calibrator.run()
