"""The quantized ops' integer math: one executor, two backends, observers of its nodes.

* :mod:`.executor`: :class:`Executor` (every integer primitive written once), ``CLEAR``,
  ``TRACING``, ``executor_for``;
* :mod:`.backends`: the leaves, :class:`ClearBackend` (numpy + Rust kernels) and
  :class:`TracingBackend` (``concrete.fhe``);
* :mod:`.observers`: :class:`RecordingObserver` (bit-width report), :class:`HintingObserver`
  (worst-case compile), :class:`RoundingRangeObserver` (streamed rounding calibration);
* :mod:`.context`: the forced executor, the running op, the debug value tracker and routed
  float implementations as context variables (thread-safe; nothing is patched on an op).

This package imports only numpy and the integer kernels; ``fhequant.fhe`` configures it.
"""

from __future__ import annotations

from fhequant.quantized.exec.backends import ClearBackend, TracingBackend, fhe_module, is_tracer
from fhequant.quantized.exec.context import (
    MODULE,
    current_op,
    failed_op,
    op_context,
    route_float_impl,
    routed_float_impl,
    run_op,
    track_values,
    tracked_values,
    use_executor,
)
from fhequant.quantized.exec.executor import CLEAR, PRIMITIVES, TRACING, Executor, executor_for
from fhequant.quantized.exec.observers import (
    MAX_TLU_BIT_WIDTH,
    HintingObserver,
    Observer,
    RecordingObserver,
    RoundingRangeObserver,
    ValueRecord,
    observed_range,
    type_range,
)

__all__ = [
    "CLEAR",
    "MAX_TLU_BIT_WIDTH",
    "MODULE",
    "PRIMITIVES",
    "TRACING",
    "ClearBackend",
    "Executor",
    "HintingObserver",
    "Observer",
    "RecordingObserver",
    "RoundingRangeObserver",
    "TracingBackend",
    "ValueRecord",
    "current_op",
    "executor_for",
    "failed_op",
    "fhe_module",
    "is_tracer",
    "observed_range",
    "op_context",
    "route_float_impl",
    "routed_float_impl",
    "run_op",
    "track_values",
    "tracked_values",
    "type_range",
    "use_executor",
]
