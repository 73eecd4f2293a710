"""Traced op chains compile with concrete-python and simulate to the clear integers.

Compilation here uses FHE simulation only (no key generation or encrypted execution), which
keeps it fast; it checks that the traced circuits are valid (fusable float subgraphs, bit
widths within limits after rounding) and that simulation matches the clear executor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant.quantization import QuantizationOptions, QuantizedArray
from fhequant.quantized import (
    CLEAR,
    QuantizedAvgPool,
    QuantizedConv,
    QuantizedFlatten,
    QuantizedGemm,
    QuantizedMaxPool,
    QuantizedMul,
    QuantizedRelu,
    use_executor,
)
from fhequant.quantized.exec import fhe_module
from fhequant.quantized.ops.base import QuantizedOp
from quantized_ops_helpers import qa_float

RNG = np.random.default_rng(3)
OPTS = QuantizationOptions(3, is_signed=True)


def _calibrate_chain(ops: list[QuantizedOp], x: np.ndarray) -> QuantizedArray:
    """Calibrate a linear chain the way the PTQ walk does (fake-quantized data downstream)."""
    q = QuantizedArray(3, x, options=OPTS)
    data: Any = x
    for op in ops:
        op.calibrate(data)
        out = op.q_impl(q, calibrate_rounding=True) if op.is_mixing else op.q_impl(q)
        q, data = out, out.dequant()
    return QuantizedArray(3, x, options=OPTS)


def _simulate_equals_clear(ops: list[QuantizedOp], q_x: QuantizedArray) -> None:
    fhe = fhe_module()
    z = q_x.quantizer

    def forward(v: Any) -> Any:
        q: Any = QuantizedArray(
            3,
            v,
            value_is_float=False,
            options=z.quant_options,
            stats=z.quant_stats,
            params=z.quant_params,
        )
        for op in ops:
            q = op.q_impl(q)
        return q.qvalues

    samples = [q_x.qvalues[[i]] for i in range(q_x.qvalues.shape[0])]
    config = fhe.Configuration(fhe_simulation=True, fhe_execution=False)
    circuit = fhe.Compiler(forward, {"v": "encrypted"}).compile(samples, config)
    with use_executor(CLEAR):
        expected = forward(q_x.qvalues)
    simulated = np.concatenate([circuit.simulate(s) for s in samples])
    np.testing.assert_array_equal(simulated, expected)


def test_gemm_relu_gemm_with_rounding_simulates_exactly() -> None:
    x = RNG.normal(size=(12, 6)).astype(np.float32)
    w1 = qa_float(RNG.normal(size=(5, 6)).astype(np.float32), 3, signed=True)
    w2 = qa_float(RNG.normal(size=(3, 5)).astype(np.float32), 3, signed=True)
    b = qa_float(RNG.normal(size=5).astype(np.float32), 3, signed=True)
    g1 = QuantizedGemm(
        4,
        "g1",
        constant_inputs={1: w1, 2: b},
        input_quant_opts=OPTS,
        transB=1,
        rounding_threshold_bits=4,
    )
    relu = QuantizedRelu(4, "relu")
    g2 = QuantizedGemm(4, "g2", constant_inputs={1: w2}, input_quant_opts=OPTS, transB=1)
    g2.produces_graph_output = True
    q_x = _calibrate_chain([g1, relu, g2], x)
    assert g1.lsbs_to_remove["matmul"] > 0
    _simulate_equals_clear([g1, relu, g2], q_x)


def test_conv_pools_flatten_mul_simulate_exactly() -> None:
    x = RNG.normal(size=(4, 2, 6, 6)).astype(np.float32)
    w = qa_float(RNG.normal(0.2, 1.0, size=(3, 2, 3, 3)).astype(np.float32), 3, signed=True)
    conv = QuantizedConv(
        4,
        "conv",
        constant_inputs={1: w},
        input_quant_opts=OPTS,
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
        rounding_threshold_bits=5,
    )
    relu = QuantizedRelu(4, "relu")
    opts4 = QuantizationOptions(4, is_signed=False)
    maxpool = QuantizedMaxPool(
        4, "max", input_quant_opts=opts4, kernel_shape=[2, 2], strides=[2, 2]
    )
    avg = QuantizedAvgPool(
        4,
        "avg",
        input_quant_opts=opts4,
        kernel_shape=[2, 2],
        strides=[1, 1],
        count_include_pad=1,
        rounding_threshold_bits=4,
    )
    flat = QuantizedFlatten(4, "flat", input_quant_opts=opts4)
    half = QuantizedMul(4, "mul", constant_inputs={1: np.float32(0.5)}, input_quant_opts=opts4)
    ops: list[QuantizedOp] = [conv, relu, maxpool, avg, flat, half]
    q_x = _calibrate_chain(ops, x)
    _simulate_equals_clear(ops, q_x)
