"""Every op's integer math gives the same integers on the clear and the tracing executor.

Three runs per op on the same quantized inputs: the clear executor (numpy kernels), the
tracing executor called on plain numpy arrays (the concrete.fhe extensions evaluate eagerly
outside tracing), and the traced concrete graph itself (``Compiler.trace`` then evaluating
the graph), which proves the op is traceable and that tracing gives the same integers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fhequant.quantization import QuantizedArray
from fhequant.quantized import CLEAR, TRACING, use_executor
from fhequant.quantized.ops.executors import fhe_module
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


@pytest.mark.parametrize("case", TRACED_CASES, ids=[c.case_id for c in TRACED_CASES])
def test_traced_graph_gives_the_clear_integers(case: OpCase) -> None:
    fhe = fhe_module()
    op, q_inputs = case.build()
    tensors = [q for q in q_inputs if isinstance(q, QuantizedArray)]
    # a fusable op with several tensor operands depends on ONE encrypted tensor: feed every
    # operand from the same circuit input
    n_args = len(tensors) if len(case.encrypted) > 1 else 1

    def forward(*ints: Any) -> Any:
        args: list[Any] = []
        k = 0
        for q in q_inputs:
            if isinstance(q, QuantizedArray):
                args.append(_rebuild(q, ints[min(k, n_args - 1)]))
                k += 1
            else:
                args.append(q)
        return _ints(op.q_impl(*args))

    def one(x0: Any) -> Any:
        return forward(x0)

    def two(x0: Any, x1: Any) -> Any:
        return forward(x0, x1)

    sample = tuple(q.qvalues for q in tensors[:n_args])
    with use_executor(CLEAR):
        expected = forward(*sample)
    fn, names = (one, ["x0"]) if n_args == 1 else (two, ["x0", "x1"])
    compiler = fhe.Compiler(fn, dict.fromkeys(names, "encrypted"))
    graph = compiler.trace([sample[0] if n_args == 1 else sample])
    result = graph(*sample)
    np.testing.assert_array_equal(np.asarray(result), np.asarray(expected))
