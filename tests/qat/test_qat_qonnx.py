"""Hand-built QONNX graphs: Quant semantics, folded weights, integer bias, errors, §4.7."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fhequant import build_quantized_module
from fhequant.errors import DTypeError, QuantizedOpError, UnquantizedTensorError
from fhequant.quantized.calibration import apply_power_of_two_scaling
from qonnx_graph import DOMAINS, Graph

RNG = np.random.default_rng(7)
X = RNG.uniform(-2.5, 2.5, size=(64, 6)).astype(np.float32)


def fake_quant(x: Any, scale: float, zp: float, bits: int, signed: bool, narrow: bool) -> Any:
    """Independent float reference of the QONNX Quant op: clip, then round half to even."""
    if signed:
        lo, hi = -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    y = np.rint(np.clip(np.asarray(x, np.float64) / scale + zp, lo, hi))
    return (y - zp) * scale


def _gemm_model(
    domain: str,
    signed: int,
    narrow: int,
    in_scale: float,
    bias: str = "float",
    hidden: bool = False,
) -> tuple[Any, np.ndarray, Any]:
    """Quant(x) -> Gemm(Quant(W), bias) with a 4-bit input and a 3-bit narrow weight."""
    g = Graph(domain)
    w = RNG.normal(size=(6, 3)).astype(np.float32)
    s_w = 0.25
    qx = g.quant("x", in_scale, 0.0, 4.0, signed=signed, narrow=narrow)
    qw = g.quant(g.const(w), s_w, 0.0, 3.0, signed=1, narrow=1)
    b = np.array([0.3, -0.7, 1.1], dtype=np.float32)
    inputs = [qx, qw]
    if bias == "float":
        inputs.append(g.const(b))
    elif bias == "int":
        inputs.append(g.quant(g.const(b), in_scale * s_w, 0.0, 16.0))
    y = g.node("Gemm", inputs)
    if hidden:
        y = g.node("Relu", [y])
    # docs/contract.md §3.8: signed=0 with narrow=1 is imported as signed=1, narrow=0.
    if not signed and narrow:
        signed, narrow = 1, 0
    ref_x = fake_quant(X, in_scale, 0, 4, bool(signed), bool(narrow))
    ref_w = fake_quant(w, s_w, 0, 3, True, True)
    ref_b = 0.0
    if bias == "float":
        ref_b = b
    elif bias == "int":
        ref_b = fake_quant(b, in_scale * s_w, 0, 16, True, False)
    ref = ref_x @ ref_w + ref_b
    return g.model(y), np.maximum(ref, 0) if hidden else ref, (ref_x, ref_w)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize(("signed", "narrow"), [(1, 0), (1, 1), (0, 0), (0, 1)])
def test_quant_gemm_matches_float_reference(domain: str, signed: int, narrow: int) -> None:
    model, expected, (ref_x, ref_w) = _gemm_model(domain, signed, narrow, 0.2)
    module = build_quantized_module(model, X, import_qat=True, n_bits=8)
    np.testing.assert_allclose(module.forward(X), expected, rtol=1e-5, atol=1e-5)
    # Input quantizer = the Brevitas quantizer (docs/contract.md §4.6); unsigned+narrow means
    # signed.
    q = module.quantize_input(X)
    eff_signed = signed or narrow
    lo = -8 + (1 if narrow and signed else 0) if eff_signed else 0
    hi = 7 if eff_signed else 15
    assert q.min() >= lo and q.max() <= hi
    # Clip before rounding: the data saturates the low end (and the high one when signed).
    assert q.min() == lo and q.max() == min(hi, int(np.rint(X.max() / 0.2)))
    np.testing.assert_array_equal(q * 0.2, ref_x)
    # Folded weights: a precomputed-QAT QA with narrow 3-bit integers.
    gemm = next(
        op for _, op in module.quant_layers_dict.values() if type(op).__name__ == "QuantizedGemm"
    )
    weight = gemm.constant_inputs[1]
    assert weight.quantizer.is_precomputed_qat and weight.quantizer.is_narrow
    np.testing.assert_array_equal(weight.qvalues * 0.25, ref_w)
    assert np.abs(weight.qvalues).max() <= 3


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("hidden", [False, True])
def test_integer_bias_is_added_as_integer(domain: str, hidden: bool) -> None:
    model, expected, _ = _gemm_model(domain, 1, 0, 0.25, bias="int", hidden=hidden)
    module = build_quantized_module(model, X, import_qat=True, n_bits=8)
    if hidden:  # the Relu output is re-quantized at 8 bits: half a step of error at most
        scale = module.output_quantizers[0].scale
        np.testing.assert_allclose(module.forward(X), expected, atol=scale / 2 + 1e-6)
        return
    gemm = next(
        op for _, op in module.quant_layers_dict.values() if type(op).__name__ == "QuantizedGemm"
    )
    assert gemm.constant_inputs[2].quantizer.is_precomputed_qat
    np.testing.assert_allclose(module.forward(X), expected, rtol=1e-5, atol=1e-5)


def test_bias_scale_mismatch_is_rejected() -> None:
    g = Graph(DOMAINS[0])
    qx = g.quant("x", 0.25, 0.0, 4.0)
    qw = g.quant(g.const(np.ones((6, 2))), 0.5, 0.0, 3.0)
    qb = g.quant(g.const(np.ones(2)), 0.3, 0.0, 16.0)  # != 0.25 * 0.5
    model = g.model(g.node("Relu", [g.node("Gemm", [qx, qw, qb])]))
    with pytest.raises(ValueError, match="bias scale"):
        build_quantized_module(model, X, import_qat=True)


def test_zero_point_and_per_tensor_scale() -> None:
    g = Graph(DOMAINS[0])
    out = g.quant("x", 0.3, 5.0, 4.0, signed=0)
    module = build_quantized_module(g.model(out), X, import_qat=True, n_bits=8)
    np.testing.assert_allclose(module.forward(X), fake_quant(X, 0.3, 5, 4, False, False), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rounding_mode": "FLOOR"}, QuantizedOpError, "rounding_mode"),
        ({"zp": 0.5}, QuantizedOpError, "zero point"),
        ({"bits": 3.5}, QuantizedOpError, "bit width"),
    ],
)
@pytest.mark.parametrize("on_weight", [False, True])
def test_quant_errors_name_the_node(
    kwargs: dict[str, Any], error: type, message: str, on_weight: bool
) -> None:
    g = Graph(DOMAINS[0])
    good = g.quant("x", 0.25, 0.0, 4.0)
    if on_weight:
        w = g.quant(g.const(np.ones((6, 2))), 0.5, **kwargs)
        out = g.node("Gemm", [good, w])
    else:
        out = g.quant(good, 0.25, **{"bits": 4.0, **kwargs})
    with pytest.raises(error, match=message) as info:
        build_quantized_module(g.model(out), X, import_qat=True)
    assert isinstance(info.value, ValueError)
    assert "Quant_" in str(info.value)


def test_variable_scale_is_a_type_error() -> None:
    g = Graph(DOMAINS[0])
    out = g.quant("x", None, scale_name="s")
    model = g.model(out, extra_inputs=("s",))
    with pytest.raises(DTypeError, match="scale"):
        build_quantized_module(model, (X, np.ones((64, 1), np.float32)), import_qat=True)


def _missing_quantizer_model() -> Any:
    """Quant -> Gemm -> Relu -> Gemm: the second Gemm's input has no Quant."""
    g = Graph(DOMAINS[0])
    qx = g.quant("x", 0.25, 0.0, 4.0)
    h = g.node("Relu", [g.node("Gemm", [qx, g.quant(g.const(RNG.normal(size=(6, 5))), 0.25)])])
    out = g.node("Gemm", [h, g.quant(g.const(RNG.normal(size=(5, 2))), 0.25)])
    return g.model(out), h


def test_missing_quantizer_lists_tensor_and_consumer() -> None:
    model, relu_out = _missing_quantizer_model()
    module = build_quantized_module(model, X, import_qat=True, n_bits=4)
    with pytest.raises(UnquantizedTensorError, match="QuantIdentity") as info:
        module.forward(X)
    assert relu_out in str(info.value) and "Gemm" in str(info.value)
    assert isinstance(info.value, ValueError)
    # The same module built with PTQ has nothing to complain about.
    build_quantized_module(model, X, n_bits=4).forward(X)


def _pow2_chain(in_scale: float, w_scale: float, out_scale: float) -> Any:
    """Quant -> Gemm -> Relu -> Quant -> Gemm (docs/contract.md §4.7 pattern)."""
    g = Graph(DOMAINS[0])
    qx = g.quant("x", in_scale, 0.0, 4.0)
    w1 = g.quant(g.const(RNG.normal(size=(6, 8))), w_scale, 0.0, 4.0, narrow=1)
    h = g.node("Relu", [g.node("Gemm", [qx, w1])])
    qh = g.quant(h, out_scale, 0.0, 4.0, signed=0)
    w2 = g.quant(g.const(RNG.normal(size=(8, 2))), 0.25, 0.0, 4.0, narrow=1)
    return g.model(g.node("Gemm", [qh, w2]))


def test_power_of_two_pass_rounds_the_accumulator() -> None:
    model = _pow2_chain(2.0**-2, 2.0**-3, 2.0**-1)
    module = build_quantized_module(model, X, import_qat=True, n_bits=8)
    gemms = [
        op for _, op in module.quant_layers_dict.values() if type(op).__name__ == "QuantizedGemm"
    ]
    k = -(-2 - 3 + 1)
    assert gemms[0].lsbs_to_remove == {"matmul": k}
    assert gemms[0].rounding_threshold_bits["n_bits"] == k
    assert gemms[1].lsbs_to_remove == {}
    # Visible in the bit-width report: the TLU input of the first Gemm lost k bits.
    report = module.bitwidth_report(X)
    first = next(out for out, (_, op) in module.quant_layers_dict.items() if op is gemms[0])
    row = next(r for r in report.rows if r.name == first)
    plain = build_quantized_module(model, X, import_qat=True, n_bits=8, rounding_threshold_bits=8)
    plain_row = next(r for r in plain.bitwidth_report(X).rows if r.name == row.name)
    assert row.tlu_input_bits < plain_row.tlu_input_bits
    # A shift-like requantization: the output stays close to the exact one.
    exact = build_quantized_module(model, X, import_qat=True, n_bits=8)
    for _, op in exact.quant_layers_dict.values():
        if hasattr(op, "lsbs_to_remove"):
            op.lsbs_to_remove.clear()
    assert np.abs(module.forward(X) - exact.forward(X)).max() <= 0.25 * 8 * 0.5 + 1e-6


@pytest.mark.parametrize(
    ("scales", "user_threshold"),
    [
        ((0.26, 2.0**-3, 2.0**-1), None),
        ((2.0**-2, 2.0**-3, 2.0**-6), None),
        ((2.0**-2, 2.0**-3, 2.0**-1), 6),
    ],
)
def test_power_of_two_pass_conditions(
    scales: tuple[float, float, float], user_threshold: Any
) -> None:
    module = build_quantized_module(
        _pow2_chain(*scales), X, import_qat=True, n_bits=8, rounding_threshold_bits=user_threshold
    )
    assert apply_power_of_two_scaling(module, user_threshold) == []
    if user_threshold is None:
        for _, op in module.quant_layers_dict.values():
            assert not getattr(op, "lsbs_to_remove", {})
