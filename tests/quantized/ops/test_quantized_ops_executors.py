"""Every op's integer math gives the same integers on the clear and the tracing executor.

Three runs per op on the same quantized inputs: the clear executor (numpy kernels), the
tracing executor called on plain numpy arrays (the concrete.fhe extensions evaluate eagerly
outside tracing), and the traced concrete graph itself (``Compiler.trace`` then evaluating
the graph), which proves the op is traceable and that tracing gives the same integers.

Per op, the integer nodes the recording observer sees (the bit-width report) are the nodes
the hinting observer is asked to hint, in the same order, and each is one node of the traced
graph with the recorded range.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fhequant.quantization import QuantizedArray
from fhequant.quantized import CLEAR, TRACING, use_executor
from fhequant.quantized.exec import (
    PRIMITIVES,
    ClearBackend,
    Executor,
    HintingObserver,
    RecordingObserver,
    TracingBackend,
    ValueRecord,
    fhe_module,
    op_context,
)
from quantized_op_cases import CASES, OpCase


def _ints(out: Any) -> Any:
    return out.qvalues if isinstance(out, QuantizedArray) else out


@pytest.mark.parametrize("case", CASES, ids=[c.case_id for c in CASES])
def test_clear_and_tracing_executors_agree(case: OpCase) -> None:
    op, q_inputs = case.build()
    with use_executor(CLEAR):
        clear = op.q_impl(*q_inputs)
    with use_executor(TRACING):
        traced = op.q_impl(*q_inputs)
    np.testing.assert_array_equal(_ints(clear), _ints(traced))
    assert np.asarray(_ints(clear)).dtype == np.asarray(_ints(traced)).dtype
    if isinstance(clear, QuantizedArray):
        np.testing.assert_array_equal(clear.values, traced.values)


RAW_OUTPUT = ("Shape", "ConstantOfShape")
TRACED_CASES = [c for c in CASES if c.op_type not in RAW_OUTPUT]


def _rebuild(q: QuantizedArray, ints: Any) -> QuantizedArray:
    z = q.quantizer
    return QuantizedArray(
        z.n_bits,
        ints,
        value_is_float=False,
        options=z.quant_options,
        stats=z.quant_stats,
        params=z.quant_params,
    )


class _Circuit:
    """An op case as a circuit of one or two encrypted integer inputs."""

    def __init__(self, case: OpCase) -> None:
        self.op, self.q_inputs = case.build()
        tensors = [q for q in self.q_inputs if isinstance(q, QuantizedArray)]
        # a fusable op with several tensor operands depends on ONE encrypted tensor: feed
        # every operand from the same circuit input
        self.n_args = len(tensors) if len(case.encrypted) > 1 else 1
        self.sample = tuple(q.qvalues for q in tensors[: self.n_args])

    def forward(self, *ints: Any) -> Any:
        args: list[Any] = []
        k = 0
        for q in self.q_inputs:
            if isinstance(q, QuantizedArray):
                args.append(_rebuild(q, ints[min(k, self.n_args - 1)]))
                k += 1
            else:
                args.append(q)
        return _ints(self.op.q_impl(*args))

    def trace(self, forward: Any) -> Any:
        """concrete's graph of ``forward`` traced on the sample."""

        def one(x0: Any) -> Any:
            return forward(x0)

        def two(x0: Any, x1: Any) -> Any:
            return forward(x0, x1)

        fn, names = (one, ["x0"]) if self.n_args == 1 else (two, ["x0", "x1"])
        compiler = fhe_module().Compiler(fn, dict.fromkeys(names, "encrypted"))
        return compiler.trace([self.sample[0] if self.n_args == 1 else self.sample])


@pytest.mark.parametrize("case", TRACED_CASES, ids=[c.case_id for c in TRACED_CASES])
def test_traced_graph_gives_the_clear_integers(case: OpCase) -> None:
    circuit = _Circuit(case)
    with use_executor(CLEAR):
        expected = circuit.forward(*circuit.sample)
    graph = circuit.trace(circuit.forward)
    result = graph(*circuit.sample)
    np.testing.assert_array_equal(np.asarray(result), np.asarray(expected))


FIRST_MARK = 40  # hinted widths that mark node i as FIRST_MARK + i bits


@pytest.mark.parametrize("case", TRACED_CASES, ids=[c.case_id for c in TRACED_CASES])
def test_recorded_hinted_and_traced_nodes_agree(case: OpCase) -> None:
    circuit = _Circuit(case)
    name = case.case_id
    recorder = RecordingObserver()
    with use_executor(Executor(ClearBackend(), recorder)), op_context(name):
        circuit.forward(*circuit.sample)
    recorded = [r for r in recorder.records if r.label != "constant"]
    nodes = [(r.op, r.label) for r in recorded]
    assert all(op == name for op, _ in nodes)

    # the hinting observer is asked for the same nodes, in the same order
    hinting = HintingObserver(recorder.records)
    with use_executor(Executor(TracingBackend(), hinting)), op_context(name):
        circuit.forward(*circuit.sample)  # the concrete.fhe leaves evaluate eagerly
    assert hinting.requests == nodes
    if not nodes:
        return

    # traced: hint node i with a width of its own, then find each node in concrete's graph
    marks = [
        ValueRecord(op, label, 0, 0, 0, 2 ** (FIRST_MARK + i) - 1)
        for i, (op, label) in enumerate(nodes)
    ]
    marking = HintingObserver(marks)

    def marked(*ints: Any) -> Any:
        with use_executor(Executor(TracingBackend(), marking)), op_context(name):
            return circuit.forward(*ints)

    graph = circuit.trace(marked)
    assert marking.requests == nodes
    found = {
        node.properties["bit_width_hint"]: node
        for node in graph.query_nodes()
        if "bit_width_hint" in node.properties
    }
    # one distinct graph node per recorded node, with the range the recording observed
    assert sorted(found) == [FIRST_MARK + i for i in range(len(nodes))]
    for i, rec in enumerate(recorded):
        lo, hi = found[FIRST_MARK + i].bounds
        assert (int(lo), int(hi)) == (rec.lo, rec.hi), (i, rec)


@pytest.mark.parametrize("backend", [ClearBackend, TracingBackend])
def test_backends_implement_leaves_only(backend: type) -> None:
    assert set(dir(backend)).isdisjoint(PRIMITIVES)
    assert set(PRIMITIVES) <= set(dir(Executor))
