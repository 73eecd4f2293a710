"""Gemm / MatMul / Conv: the integer formula against float and exact integer references."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant.errors import NotCalibratedError, QuantizedOpError
from fhequant.quantization import QuantizationOptions
from fhequant.quantized import QuantizedConv, QuantizedGemm, QuantizedMatMul
from fhequant.quantized.exec import TRACING, use_executor
from quantized_ops_helpers import qa_float, qa_int

RNG = np.random.default_rng(1234)


def _gemm(trans_b: int, bias: bool, n_bits: int = 4) -> tuple[QuantizedGemm, np.ndarray]:
    x = RNG.normal(size=(7, 5)).astype(np.float32)
    w = RNG.normal(0.3, 1.0, size=(3, 5) if trans_b else (5, 3)).astype(np.float32)
    consts = {1: qa_float(w, n_bits, signed=True)}
    if bias:
        consts[2] = qa_float(RNG.normal(size=3).astype(np.float32), n_bits, signed=True)
    op = QuantizedGemm(
        5,
        "gemm",
        constant_inputs=consts,
        input_quant_opts=QuantizationOptions(n_bits, is_signed=True),
        transB=trans_b,
    )
    op.calibrate(x)
    return op, x


@pytest.mark.parametrize("trans_b", [0, 1])
def test_graph_output_gemm_accumulator_is_exact_zp_corrected_product(trans_b: int) -> None:
    op, _ = _gemm(trans_b, bias=False)
    q_w = op.constant_inputs[1]
    q_x = qa_int(RNG.integers(0, 16, size=(7, 5)), 0.1, 3, n_bits=4, signed=True)
    assert q_w.quantizer.zero_point != 0 and q_x.quantizer.zero_point != 0
    op.produces_graph_output = True
    out = op.q_impl(q_x)
    w_int = q_w.qvalues.T if trans_b else q_w.qvalues
    expected = (q_x.qvalues - 3) @ (w_int - q_w.quantizer.zero_point)
    # acc - out_zp is the exact integer product of the centred operands [FIX a: p = 5].
    np.testing.assert_array_equal(out.qvalues - out.quantizer.zero_point, expected)
    assert out.quantizer.scale == 0.1 * q_w.quantizer.scale
    assert np.asarray(out.quantizer.zero_point).shape == (1, 3)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_graph_output_gemm_dequantizes_to_float_gemm_of_dequantized_inputs(trans_b: int) -> None:
    op, x = _gemm(trans_b, bias=True)
    q_w, q_b = op.constant_inputs[1], op.constant_inputs[2]
    q_x = qa_float(x, 4, signed=True)
    op.produces_graph_output = True
    out = op.q_impl(q_x)
    w = q_w.dequant().T if trans_b else q_w.dequant()
    expected = q_x.dequant() @ w + q_b.values
    np.testing.assert_allclose(out.dequant(), expected, rtol=1e-6, atol=1e-5)
    assert out.quantizer.zero_point.dtype == np.float64


def test_hidden_gemm_rescales_then_adds_float_bias_and_requantizes() -> None:
    op, x = _gemm(1, bias=True)
    q_w, q_b = op.constant_inputs[1], op.constant_inputs[2]
    q_x = qa_float(x, 4, signed=True)
    out = op.q_impl(q_x)
    m = q_x.quantizer.scale * q_w.quantizer.scale
    centred = (q_x.qvalues - q_x.quantizer.zero_point) @ (q_w.qvalues - q_w.quantizer.zero_point).T
    v = m * centred.astype(np.float64) + q_b.values
    s, z = op.output_quant_params.scale, op.output_quant_params.zero_point
    np.testing.assert_array_equal(out.qvalues, np.clip(np.rint(v / s + z), 0, 31))
    np.testing.assert_allclose(out.values, v, rtol=1e-12)
    # dequantized output is within half a step (plus clipping at the range) of the floats
    inside = (v >= op.output_quant_stats.rmin) & (v <= op.output_quant_stats.rmax)
    assert np.all(np.abs(out.dequant() - v)[inside] <= s / 2 + 1e-9)


def test_matmul_uses_rank3_weights() -> None:
    w = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    op = QuantizedMatMul(5, "mm", constant_inputs={"1": qa_float(w, 5, signed=True)})
    x = RNG.normal(size=(2, 6, 4)).astype(np.float32)
    raw = op.calibrate(x)
    assert raw.shape == (2, 6, 3) and raw.dtype == np.float32
    op.produces_graph_output = True
    q_x = qa_float(x, 5, signed=True)
    out = op.q_impl(q_x)
    np.testing.assert_allclose(out.dequant(), q_x.dequant() @ op.constant_inputs[1].dequant())


def test_encrypted_gemm_matches_exact_product() -> None:
    op = QuantizedMatMul(6, "mm", int_input_names={"a", "b"})
    a = RNG.normal(size=(3, 4)).astype(np.float32)
    b = RNG.normal(size=(4, 2)).astype(np.float32)
    op.calibrate(a, b)
    q_a, q_b = (
        qa_int(RNG.integers(0, 32, (3, 4)), 0.05, 7),
        qa_int(RNG.integers(0, 32, (4, 2)), 0.1, 11),
    )
    op.input_quant_opts = q_a.quantizer.quant_options
    out = op.q_impl(q_a, q_b)
    v = 0.05 * 0.1 * ((q_a.qvalues - 7) @ (q_b.qvalues - 11)).astype(np.float64)
    np.testing.assert_allclose(out.values, v)


def test_gemm_constructor_errors() -> None:
    w = qa_float(np.ones((2, 2), np.float32), 4)
    with pytest.raises(QuantizedOpError, match="alpha"):
        QuantizedGemm(5, "g", constant_inputs={1: w}, alpha=2.0)
    with pytest.raises(QuantizedOpError, match="beta"):
        QuantizedGemm(5, "g", constant_inputs={1: w}, beta=0.5)
    with pytest.raises(QuantizedOpError, match="rank 4"):
        QuantizedGemm(5, "g", constant_inputs={1: qa_float(np.ones((1, 1, 2, 2)), 4)})
    with pytest.raises(QuantizedOpError, match="unknown attribute"):
        QuantizedGemm(5, "g", constant_inputs={1: w}, foo=1)
    with pytest.raises(QuantizedOpError, match="unknown constant input"):
        QuantizedGemm(5, "g", constant_inputs={"weights": w})
    op = QuantizedGemm(5, "g", constant_inputs={1: w})
    with pytest.raises(QuantizedOpError, match="expects"):
        op.calibrate(np.ones((2, 2)), np.ones(2), np.ones(2))
    with pytest.raises(NotCalibratedError, match="'g'"):
        op.q_impl(qa_float(np.ones((2, 2)), 4))


def _float_conv(x: np.ndarray, w: np.ndarray, pads: list[int], strides: list[int]) -> np.ndarray:
    """Plain float64 2-D conv (group 1) by explicit loops: the test's own reference."""
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n, _, h, wd = xp.shape
    o, _, kh, kw = w.shape
    oh, ow = (h - kh) // strides[0] + 1, (wd - kw) // strides[1] + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[
                :, :, i * strides[0] : i * strides[0] + kh, j * strides[1] : j * strides[1] + kw
            ]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return out


@pytest.mark.parametrize("graph_output", [True, False])
def test_conv_matches_float_conv_of_dequantized_inputs(graph_output: bool) -> None:
    x = RNG.normal(0.5, 1.0, size=(2, 3, 5, 6)).astype(np.float32)
    w = RNG.normal(0.2, 1.0, size=(4, 3, 3, 3)).astype(np.float32)
    b = RNG.normal(size=4).astype(np.float32)
    q_w, q_b = qa_float(w, 4, signed=True), qa_float(b, 4, signed=True)
    assert q_w.quantizer.zero_point != 0
    attrs = {"kernel_shape": [3, 3], "pads": [1, 0, 2, 1], "strides": [2, 1]}
    op = QuantizedConv(
        6,
        "conv",
        constant_inputs={1: q_w, 2: q_b},
        input_quant_opts=QuantizationOptions(4),
        **attrs,
    )
    op.calibrate(x)
    op.produces_graph_output = graph_output
    q_x = qa_float(x, 4)
    assert q_x.quantizer.zero_point != 0  # padding must use z_x, so pads dequantize to 0
    out = op.q_impl(q_x)
    expected = _float_conv(q_x.dequant(), q_w.dequant(), attrs["pads"], attrs["strides"])
    expected = expected + b.reshape(1, -1, 1, 1)
    if graph_output:
        np.testing.assert_allclose(out.dequant(), expected, rtol=1e-9, atol=1e-6)
        assert out.quantizer.zero_point.shape == (1, 4, 1, 1)
        centred = _float_conv(
            (q_x.qvalues - q_x.quantizer.zero_point).astype(np.float64),
            (q_w.qvalues - q_w.quantizer.zero_point).astype(np.float64),
            attrs["pads"],
            attrs["strides"],
        )
        no_bias = out.qvalues - (
            out.quantizer.zero_point + b.reshape(1, -1, 1, 1) / out.quantizer.scale
        )
        np.testing.assert_allclose(no_bias, centred, atol=1e-6)
    else:
        np.testing.assert_allclose(out.values, expected, rtol=1e-9, atol=1e-6)


def test_conv1d_runs_as_2d() -> None:
    x = RNG.normal(size=(2, 2, 9)).astype(np.float32)
    w = qa_float(RNG.normal(size=(3, 2, 3)).astype(np.float32), 4, signed=True)
    opts = QuantizationOptions(4, is_signed=True)
    op = QuantizedConv(
        5, "c1", constant_inputs={1: w}, input_quant_opts=opts, kernel_shape=[3], pads=[1, 1]
    )
    raw = op.calibrate(x)
    op.produces_graph_output = True
    q_x = qa_float(x, 4, signed=True)
    out = op.q_impl(q_x)
    assert out.qvalues.shape == raw.shape == (2, 3, 9)
    expected = _float_conv(
        q_x.dequant()[:, :, None, :], w.dequant()[:, :, None, :], [0, 1, 0, 1], [1, 1]
    )
    np.testing.assert_allclose(out.dequant(), expected[:, :, 0, :], atol=1e-9)


def test_conv_constructor_and_input_errors() -> None:
    w = qa_float(np.ones((1, 1, 2, 2), np.float32), 4)
    with pytest.raises(QuantizedOpError, match="dilations"):
        QuantizedConv(5, "c", constant_inputs={1: w}, kernel_shape=[2, 2], dilations=[2, 2])
    with pytest.raises(QuantizedOpError, match="constant"):
        QuantizedConv(5, "c", kernel_shape=[2, 2])
    op = QuantizedConv(5, "c", constant_inputs={1: w}, kernel_shape=[2, 2])
    op.calibrate(np.ones((1, 1, 3, 3), np.float32))
    bad_w = qa_int(np.ones((1, 1, 2, 2)), 0.1, 0)
    bad_w.quantizer.zero_point = 0.5
    op.constant_inputs[1] = bad_w
    with pytest.raises(QuantizedOpError, match=r"'c'.*weight zero point"):
        op.q_impl(qa_float(np.ones((1, 1, 3, 3), np.float32), 5, signed=True))


def test_array_zero_point_input_is_requantized_before_conv_and_gemm() -> None:
    # A graph-output Gemm's QuantizedArray carries a (1, N) float zp; a consumer needing a
    # scalar zp re-quantizes it from its float values (fhequant rule, docs/contract.md §2.2).
    x = RNG.normal(size=(1, 1, 3, 3)).astype(np.float32)
    w = qa_float(np.ones((1, 1, 2, 2), np.float32), 4)
    opts = QuantizationOptions(4, is_signed=True)
    op = QuantizedConv(5, "c", constant_inputs={1: w}, input_quant_opts=opts, kernel_shape=[2, 2])
    op.calibrate(x)
    q_x = qa_float(x, 4, signed=True)
    q_x.quantizer.zero_point = np.full((1, 1, 1, 1), float(q_x.quantizer.zero_point))
    out = op.q_impl(q_x)
    prepared = op._prepare_inputs_with_constants(q_x, calibrate=False, quantize_actual_values=True)
    assert np.ndim(prepared[0].quantizer.zero_point) == 0
    assert out.qvalues.shape == (1, 1, 2, 2)


def test_raw_inputs_are_not_quantized() -> None:
    assert QuantizedGemm.must_quantize_input(1) and QuantizedGemm.must_quantize_input(2)
    from fhequant.quantized import QuantizedBrevitasQuant, QuantizedReshape

    assert not QuantizedReshape.must_quantize_input(1)
    assert not QuantizedBrevitasQuant.must_quantize_input(3)
    assert QuantizedReshape.quantize_inputs_with_model_outputs_precision
    assert not QuantizedGemm.quantize_inputs_with_model_outputs_precision
    assert QuantizedGemm.is_mixing and not QuantizedReshape.is_mixing


@st.composite
def _hidden_gemm_case(draw: Any) -> dict[str, Any]:
    rows, k, n = draw(st.integers(1, 90)), draw(st.integers(1, 9)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return {
        "x": rng.normal(size=(rows, k)).astype(draw(st.sampled_from([np.float32, np.float64]))),
        "w": rng.normal(draw(st.floats(-1, 1)), 1.0, size=(k, n)).astype(np.float32),
        "b": rng.normal(size=n).astype(np.float32) if draw(st.booleans()) else None,
        "n_bits": draw(st.integers(2, 8)),
        "signed": draw(st.booleans()),
        "rounding": draw(st.sampled_from([None, 2, 4])),
        "trans_b": draw(st.sampled_from([0, 1])),
    }


@settings(max_examples=40, deadline=None)
@given(_hidden_gemm_case())
def test_fused_hidden_gemm_equals_the_step_by_step_path(case: dict[str, Any]) -> None:
    """The fused clear evaluation gives the bits of the unfused steps and of the tracing
    executor's steps, with and without rounding."""
    n_bits, w = case["n_bits"], case["w"]
    consts = {1: qa_float(w.T if case["trans_b"] else w, n_bits, signed=True)}
    if case["b"] is not None:
        consts[2] = qa_float(case["b"], n_bits, signed=True)
    op = QuantizedGemm(
        n_bits,
        "gemm",
        constant_inputs=consts,
        input_quant_opts=QuantizationOptions(n_bits, is_signed=case["signed"]),
        rounding_threshold_bits=case["rounding"],
        transB=case["trans_b"],
    )
    op.calibrate(case["x"])
    q_x = qa_float(case["x"], n_bits, signed=case["signed"])
    op.q_impl(q_x, calibrate_rounding=True)  # sets lsbs_to_remove (unfused: it needs acc)
    fused = op.q_impl(q_x)
    op.debug_value_tracker = {}  # tracking the accumulator runs the steps one by one
    steps = op.q_impl(q_x)
    op.debug_value_tracker = None
    with use_executor(TRACING):
        traced = op.q_impl(q_x)
    for other in (steps, traced):
        np.testing.assert_array_equal(fused.qvalues, other.qvalues)
        np.testing.assert_array_equal(fused.values.view(np.uint64), other.values.view(np.uint64))
