"""Statistics gathered while the graph inputs load (docs/calibration-throughput.md, eighth
round of issue 16).

A Gemm, MatMul or Conv whose only variable input is a graph input computes its statistics
(the min and max of its float result) from the raw input blocks alone: not from the input's
quantizer, which needs every row first. The walk (``ModuleCalibrator``) therefore builds such
an op before loading, and :class:`EarlyStatistics` feeds it each input block as it arrives, so
its statistics pass needs no second read of the stored input and runs while the source
produces the next batch (``streaming.read_ahead``). The op's own statistics pass then takes
the result (:meth:`EarlyStatistics.take`) instead of reading the blocks again; the numbers are
the same (min and max do not depend on how the rows are split into blocks).

An op is watched only when everything its statistics read is known before loading (the
input alone, constant weights and bias, the min/max statistic, PTQ, no bias correction) and
the fused kernels serve it (:class:`~fhequant.quantized.fused_stats.Extremes`). Anything that
goes wrong on a block (a non-finite result, an error of the float op) drops the op from the
early pass: its own pass then runs as before and reports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant.quantized.fused_stats import Extremes
from fhequant.quantized.graph import use_split_independent_impl

__all__ = ["ENABLED", "EarlyStatistics"]

#: Gather the statistics of the ops that read a graph input alone while the inputs load.
#: Set to False to run their statistics pass after loading (same numbers; tests compare).
ENABLED = True


class EarlyStatistics:
    """The statistics gathered during loading, by op output name."""

    def __init__(self) -> None:
        self._by_input: dict[str, list[Extremes]] = {}
        self._done: dict[str, np.ndarray] = {}

    def watch(self, op: Any, name: str, out: str) -> bool:
        """Gather the statistics of ``op`` (output ``out``), whose only variable input is the
        graph input ``name``; False when the fused kernels do not serve it."""
        with use_split_independent_impl(op):
            extremes = Extremes.of(op, [name], out)
        if extremes is None:
            return False
        self._by_input.setdefault(name, []).append(extremes)
        return True

    def add(self, name: str, block: np.ndarray, b: int) -> None:
        """Feed block ``b`` of graph input ``name`` (as stored) to the ops that read it."""
        ops = self._by_input.get(name)
        if not ops:
            return
        if block.dtype.kind != "f":
            self._by_input[name] = []  # its ops' own passes read it as they always did
            return
        kept: list[Extremes] = []
        for extremes in ops:
            try:
                with use_split_independent_impl(extremes.op):
                    extremes.add(block, None, b, lambda: block)
            except Exception:  # the op's own pass runs again and reports it
                continue
            kept.append(extremes)
        self._by_input[name] = kept

    def finish(self) -> None:
        """Every block was fed: the results are ready for :meth:`take`."""
        for ops in self._by_input.values():
            for extremes in ops:
                if extremes.dtype is not None:  # at least one value
                    self._done[extremes.out] = extremes.result()
        self._by_input.clear()

    def take(self, out: str) -> np.ndarray | None:
        """The ``[min, max]`` of output ``out`` gathered while loading (forgotten here), or
        None when it was not."""
        return self._done.pop(out, None)
