"""The calibration walk hands the Gemm and Conv kernels int8/int16 input integers (the
graph input quantized narrow, re-quantization tables written narrow, shape ops moving them
narrow) instead of int64 copies: each test builds the module with and without narrow
inputs, demands identical state and outputs, and checks the dtypes the kernels received."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from onnx import helper

from fhequant import _core, build_quantized_module
from fhequant.quantization import QuantizedArray
from fhequant.quantized.ops import shape
from fhequant.quantized.ops.linear import QuantizedConv, QuantizedGemm
from ptq_helpers import assert_same_module, gemm_node, make_model, mlp

_KERNELS = ("int_matmul_rescale_quant", "int_conv2d_rescale_quant", "int_matmul")
# the integer filter (and kept product) of a Gemm's statistics reads the producer's stored
# integers, narrow either way
_KEPT = "int_matmul_acc_extremes"


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, tuple[int, ...]]]:
    """(kernel, input dtype, input shape) of every call of the Gemm/Conv kernels."""
    seen: list[tuple[str, str, tuple[int, ...]]] = []

    def spy(name: str) -> Callable[..., Any]:
        kernel = getattr(_core, name)

        def call(a: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append((name, a.dtype.name, a.shape))
            return kernel(a, *args, **kwargs)

        return call

    for name in (*_KERNELS, _KEPT):
        monkeypatch.setattr(_core, name, spy(name))
    return seen


def _wide_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk before narrow inputs: the ops read int64 ``qvalues``, tables write int64."""
    monkeypatch.setattr(QuantizedArray, "narrow_qvalues", lambda self: self.qvalues)
    monkeypatch.setattr(QuantizedGemm, "narrow_inputs", False)
    monkeypatch.setattr(QuantizedConv, "narrow_inputs", False)
    for op in vars(shape).values():
        if isinstance(op, type) and issubclass(op, shape._ShapeOp) and op.narrow_inputs:
            monkeypatch.setattr(op, "narrow_inputs", False)


def _both(
    monkeypatch: pytest.MonkeyPatch, model: Any, x: np.ndarray, **kwargs: Any
) -> tuple[Any, Any, list[Any], list[Any]]:
    with monkeypatch.context() as m:
        narrow_calls = _spy(m)
        narrow = build_quantized_module(model, x, **kwargs)
    with monkeypatch.context() as m:
        wide_calls = _spy(m)
        _wide_only(m)
        wide = build_quantized_module(model, x, **kwargs)
    return narrow, wide, narrow_calls, wide_calls


@pytest.mark.parametrize("rounding", [None, 4])
def test_mlp_gemms_read_narrow_integers_and_build_the_same_module(
    monkeypatch: pytest.MonkeyPatch, rounding: int | None
) -> None:
    rng = np.random.default_rng(21)
    x = rng.normal(size=(900, 12)).astype(np.float32)
    model = mlp([12, 20, 16, 3], act="Relu", seed=4)
    narrow, wide, calls, wide_calls = _both(
        monkeypatch, model, x, n_bits=6, batch_size=256, rounding_threshold_bits=rounding
    )
    assert_same_module(narrow, wide, x[:50])
    fused = {(dtype, shape[-1]) for name, dtype, shape in calls if "rescale_quant" in name}
    if rounding is None:
        # the first Gemm reads the graph input, the second the Relu's integers (its table),
        # both as int8; the last (a graph output) takes the plain product, also of int8
        # integers
        assert fused == {("int8", 12), ("int8", 20)}
        assert {(d, s[-1]) for n, d, s in calls if n == "int_matmul"} == {("int8", 16)}
    # the statistics of the second and last Gemms filter with the integer product of the
    # Relus' stored integers, int8 as stored
    assert {(d, s[-1]) for n, d, s in calls if n == _KEPT} == {("int8", 20), ("int8", 16)}
    assert calls and all(dtype != "int64" for _, dtype, _ in calls)
    wide_fused = [dtype for name, dtype, _ in wide_calls if name != _KEPT]
    assert wide_fused and all(dtype == "int64" for dtype in wide_fused)


def test_conv_flatten_gemm_reads_narrow_integers_and_builds_the_same_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(9)
    inits = {
        "w1": (rng.normal(size=(3, 1, 3, 3)) / 3).astype(np.float32),
        "b1": (0.1 * rng.normal(size=3)).astype(np.float32),
        "w2": (rng.normal(size=(4, 3, 3, 3)) / 5).astype(np.float32),
        "w3": (rng.normal(size=(2, 16)) / 4).astype(np.float32),
        "w4": (rng.normal(size=(3, 2)) / 2).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        gemm_node("f", "w3", None, "g", "fc"),
        helper.make_node("Relu", ["g"], ["r3"], name="relu3"),
        gemm_node("r3", "w4", None, "y", "fc2"),
    ]
    model = make_model(nodes, [("x", [None, 1, 4, 4])], [("y", [None, 3])], inits)
    x = rng.normal(size=(300, 1, 4, 4)).astype(np.float32)
    narrow, wide, calls, wide_calls = _both(monkeypatch, model, x, n_bits=5, batch_size=64)
    assert_same_module(narrow, wide, x[:20])
    kinds = {(name, dtype) for name, dtype, _ in calls}
    # the Convs read int8 (the graph input quantized narrow, then relu1's table); fc reads
    # the Flatten's output, which moved relu2's int8 integers without widening them; fc2, a
    # graph output, the Relu's table as int8
    assert kinds == {
        ("int_conv2d_rescale_quant", "int8"),
        ("int_matmul_rescale_quant", "int8"),
        ("int_matmul", "int8"),
        (_KEPT, "int8"),
    }
    assert all(dtype == "int64" for name, dtype, _ in wide_calls if name != _KEPT)
    wide_kinds = {(name, dtype) for name, dtype, _ in wide_calls}
    assert ("int_conv2d_rescale_quant", "int64") in wide_kinds


def test_narrow_qvalues_widen_to_the_same_integers() -> None:
    q = QuantizedArray(5, np.linspace(-2, 3, 40).reshape(4, 10))
    wide = q.qvalues
    ints = wide.astype(np.int8)
    quantizer = q.quantizer
    parts = (quantizer.quant_options, quantizer.quant_stats, quantizer.quant_params)
    narrow = QuantizedArray.from_narrow(
        5, ints, None, None, options=parts[0], stats=parts[1], params=parts[2]
    )
    assert narrow.narrow_qvalues() is ints  # handed out as held
    assert narrow.compact_qvalues()[1:] == (int(wide.min()), int(wide.max()))
    np.testing.assert_array_equal(narrow.values, quantizer.dequant(wide))
    assert narrow.qvalues.dtype == np.int64
    np.testing.assert_array_equal(narrow.qvalues, wide)
    assert narrow.narrow_qvalues().dtype == np.int64  # widened once read as qvalues
