"""The deliberate fixes of docs/contract.md "Product decisions" 2(a)-(c), checked against float
math.

Each test recomputes the module's output from its own quantizers with plain float64 algebra
(dequantize every integer operand, multiply, add the float bias): the integer pipeline must
give the same numbers up to float rounding (the graph-output bias term is float32, docs/contract.md
§3.1), where the reference's bugs are off by whole quantization steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import helper

from fhequant import build_quantized_module
from fhequant.quantization import QuantizedArray, UniformQuantizer
from ptq_helpers import gemm_node, make_model

RNG = np.random.default_rng(77)


def _deq(q: Any, quantizer: UniformQuantizer) -> np.ndarray:
    """scale·(q - zp) in float64, written out here (not the quantizer's own dequant)."""
    zp = np.asarray(quantizer.zero_point, dtype=np.float64)
    return float(quantizer.scale) * (np.asarray(q, dtype=np.float64) - zp)


def _quant(v: np.ndarray, quantizer: UniformQuantizer) -> np.ndarray:
    """rint(v/scale + zp) clipped to the quantizer's range, written out here."""
    n = quantizer.n_bits
    offset = quantizer.offset
    q = np.rint(v / float(quantizer.scale) + float(quantizer.zero_point))
    return np.clip(q, -offset, 2**n - 1 - offset)


def test_fix_a_single_linear_with_asymmetric_weights_and_transb() -> None:
    # 7 inputs, 3 outputs: the reference used p = 3 (the dim before transB) instead of 7.
    k, n_out = 7, 3
    w = RNG.uniform(0.1, 1.0, size=(n_out, k)).astype(np.float32)  # asymmetric, z_w != 0
    b = RNG.normal(size=n_out).astype(np.float32)
    model = make_model(
        [gemm_node("x", "w", "b", "y", "fc")],
        [("x", [None, k])],
        [("y", [None, n_out])],
        {"w": w, "b": b},
    )
    x = RNG.uniform(0.2, 1.0, size=(500, k)).astype(np.float32)  # unsigned input, z_x != 0
    module = build_quantized_module(model, x, n_bits=4, rounding_threshold_bits=3)
    op = module.quant_layers_dict["y"][1]
    q_in = module.input_quantizers[0]
    weights: QuantizedArray = op.constant_inputs[1]
    assert q_in is not None
    assert int(q_in.zero_point) != 0
    assert int(weights.quantizer.zero_point) != 0

    test = RNG.uniform(0.2, 1.0, size=(40, k)).astype(np.float32)
    x_hat = _deq(module.quantize_input(test), q_in)
    w_hat = _deq(weights.qvalues, weights.quantizer)
    expected = x_hat @ w_hat.T + b.astype(np.float64)
    got = module.forward(test)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # The p·z_x·z_w error of the reference would be a whole number of m·z_x·z_w steps.
    m = float(q_in.scale) * float(weights.quantizer.scale)
    wrong = abs((n_out - k) * m * float(q_in.zero_point) * float(weights.quantizer.zero_point))
    assert wrong > 1000 * np.abs(got - expected).max()


def test_fix_b_gemm_followed_by_gemm_without_activation() -> None:
    w1 = RNG.normal(size=(5, 6)).astype(np.float32)
    b1 = RNG.normal(size=5).astype(np.float32)
    w2 = RNG.uniform(-0.2, 1.0, size=(2, 5)).astype(np.float32)
    b2 = RNG.normal(size=2).astype(np.float32)
    model = make_model(
        [gemm_node("x", "w1", "b1", "h", "fc1"), gemm_node("h", "w2", "b2", "y", "fc2")],
        [("x", [None, 6])],
        [("y", [None, 2])],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
    )
    x = RNG.normal(size=(400, 6)).astype(np.float32)
    module = build_quantized_module(model, x, n_bits=5)
    fc1 = module.quant_layers_dict["h"][1]
    fc2 = module.quant_layers_dict["y"][1]
    # A hidden Gemm gets scalar output params (the reference's analytical array zp crashed).
    assert np.ndim(fc1.output_quant_params.zero_point) == 0
    assert np.ndim(fc2.output_quant_params.zero_point) == 2

    test = RNG.normal(size=(30, 6)).astype(np.float32)
    q_in = module.input_quantizers[0]
    assert q_in is not None
    wq1: QuantizedArray = fc1.constant_inputs[1]
    wq2: QuantizedArray = fc2.constant_inputs[1]
    h = _deq(module.quantize_input(test), q_in) @ _deq(wq1.qvalues, wq1.quantizer).T + b1
    # fc2 re-quantizes fc1's float output with its own input options (op_inputs bits),
    # params recomputed from fc1's calibrated (rmin, rmax).
    stats = fc1.output_quant_stats
    requant = QuantizedArray(
        fc2.input_quant_opts.n_bits,
        np.array([stats.rmin, stats.rmax]),
        options=fc2.input_quant_opts,
    ).quantizer
    h_hat = _deq(_quant(h, requant), requant)
    expected = h_hat @ _deq(wq2.qvalues, wq2.quantizer).T + b2
    np.testing.assert_allclose(module.forward(test), expected, rtol=1e-6, atol=1e-6)


def test_fix_c_graph_output_mul_of_two_encrypted_tensors() -> None:
    wa = (0.3 * RNG.normal(size=(4, 3))).astype(np.float32)
    wb = (0.3 * RNG.normal(size=(4, 3))).astype(np.float32)
    ba = np.full(4, 3.0, dtype=np.float32)  # positive ranges away from 0: both zps non-zero
    bb = np.full(4, 5.0, dtype=np.float32)
    model = make_model(
        [
            gemm_node("x", "wa", "ba", "a", "fca"),
            gemm_node("x", "wb", "bb", "b", "fcb"),
            helper.make_node("Mul", ["a", "b"], ["y"], name="mul"),
        ],
        [("x", [None, 3])],
        [("y", [None, 4])],
        {"wa": wa, "ba": ba, "wb": wb, "bb": bb},
    )
    x = RNG.normal(size=(300, 3)).astype(np.float32)
    module = build_quantized_module(model, x, n_bits=4)
    test = RNG.normal(size=(25, 3)).astype(np.float32)
    got, tracker = module.forward(test, debug=True)
    q0, q1 = tracker["mul"]["prepared_inputs"]
    z0, z1 = int(q0.quantizer.zero_point), int(q1.quantizer.zero_point)
    assert z0 != 0 and z1 != 0
    expected = _deq(q0.qvalues, q0.quantizer) * _deq(q1.qvalues, q1.quantizer)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # The reference's +z0·z1 would be off by 2·z0·z1·s0·s1 everywhere.
    step = 2 * abs(z0 * z1) * float(q0.quantizer.scale) * float(q1.quantizer.scale)
    assert step > 1e6 * np.abs(got - expected).max()
