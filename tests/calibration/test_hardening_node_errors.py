"""Errors inside a node's float computation during calibration name the node (issue 15).

numpy's own message (``cannot reshape array of size 80 into shape (1,8)``) used to reach the
user; now a typed error names the ONNX node and its op type, keeps numpy's text and, for a
Reshape baked to batch 1, says how to export the model with a dynamic batch axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import helper

from fhequant import build_quantized_module, errors
from ptq_helpers import make_model

RNG = np.random.default_rng(15)


def _flatten_then_gemm(target: list[int]) -> Any:
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="/flatten/Reshape"),
        helper.make_node("Gemm", ["r", "w"], ["y"], name="fc", transB=1),
    ]
    inits = {
        "shape": np.array(target, np.int64),
        "w": RNG.normal(size=(3, 8)).astype(np.float32),
    }
    return make_model(nodes, [("x", [1, 2, 4])], [("y", [1, 3])], inits)


def test_reshape_baked_to_batch_one_names_the_node_and_the_export_fix() -> None:
    x = RNG.normal(size=(10, 2, 4)).astype(np.float32)
    with pytest.raises(errors.ShapeError) as info:
        build_quantized_module(_flatten_then_gemm([1, 8]), x, n_bits=4)
    msg = str(info.value)
    assert "'/flatten/Reshape' (Reshape)" in msg
    assert "cannot reshape array of size 80 into shape (1,8)" in msg  # numpy's text, kept
    assert "batch dimension to 1" in msg and "10 rows" in msg
    assert "dynamic_axes" in msg and "x.flatten(1)" in msg
    assert isinstance(info.value.__cause__, ValueError)


def test_the_same_model_calibrates_with_batch_one_or_a_free_batch_axis() -> None:
    x = RNG.normal(size=(10, 2, 4)).astype(np.float32)
    with pytest.warns(errors.CalibrationWarning, match="only 1 calibration row"):
        build_quantized_module(_flatten_then_gemm([1, 8]), x[:1], n_bits=4)
    build_quantized_module(_flatten_then_gemm([-1, 8]), x, n_bits=4)


def test_any_other_failure_of_a_float_op_is_typed_and_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fhequant.quantized.ops import ONNX_OPS_TO_QUANTIZED_IMPL

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(ONNX_OPS_TO_QUANTIZED_IMPL["Reshape"], "call_impl", broken)
    x = RNG.normal(size=(10, 2, 4)).astype(np.float32)
    with pytest.raises(
        errors.QuantizedOpError, match=r"'/flatten/Reshape' \(Reshape\).*RuntimeError: boom"
    ):
        build_quantized_module(_flatten_then_gemm([-1, 8]), x, n_bits=4)
