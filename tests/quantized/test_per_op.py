"""Per-op n_bits and rounding_threshold_bits (fhequant.quantized.per_op, docs/cost.md)."""

from __future__ import annotations

import numpy as np
import pytest

from fhequant import build_quantized_module
from fhequant.errors import ArgumentError, QuantizedOpError, UnknownOpError
from fhequant.onnx import NumpyModule
from fhequant.quantized.n_bits import n_bits_per_op, resolve_n_bits
from fhequant.quantized.ops.rounding import rounding_per_op
from fhequant.quantized.per_op import PerOp
from fhequant.quantized.post_training import PostTrainingAffineQuantization
from ptq_helpers import mlp

X = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)


def _ops(module):  # output name -> op
    return {name: op for name, (_, op) in module.quant_layers_dict.items()}


def test_per_op_n_bits_reach_each_op() -> None:
    module = build_quantized_module(mlp([6, 5, 3]), X, n_bits={"default": 6, "gemm0": 3})
    ops = _ops(module)
    first, last = ops["g0"], ops["y"]
    assert first.input_quant_opts.n_bits == 3
    assert all(c.quantizer.n_bits == 3 for c in first.constant_inputs.values())
    assert last.input_quant_opts.n_bits == 6
    assert all(c.quantizer.n_bits == 6 for c in last.constant_inputs.values())
    # the output tensor name works as well, and a dict value is resolved as a global n_bits
    by_output = build_quantized_module(
        mlp([6, 5, 3]), X, n_bits={"default": 6, "g0": {"op_weights": 3, "op_inputs": 3}}
    )
    np.testing.assert_array_equal(by_output.forward(X), module.forward(X))


def test_default_only_mapping_is_the_global_setting() -> None:
    same = build_quantized_module(mlp([6, 5, 3]), X, n_bits={"default": 5})
    ref = build_quantized_module(mlp([6, 5, 3]), X, n_bits=5)
    np.testing.assert_array_equal(same.forward(X), ref.forward(X))
    # without "default", unnamed ops get 8 bits (build_quantized_module's default)
    assert resolve_n_bits({"gemm0": 4}) == resolve_n_bits(8)


def test_per_op_rounding() -> None:
    module = build_quantized_module(
        mlp([6, 5, 3]), X, n_bits=6, rounding_threshold_bits={"y": 4, "default": None}
    )
    ops = _ops(module)
    assert ops["g0"].rounding_threshold_bits is None
    assert ops["y"].rounding_threshold_bits["n_bits"] == 4
    ref = build_quantized_module(mlp([6, 5, 3]), X, n_bits=6, rounding_threshold_bits=4)
    assert _ops(ref)["g0"].rounding_threshold_bits["n_bits"] == 4


@pytest.mark.parametrize("what", ["n_bits", "rounding_threshold_bits"])
def test_unknown_op_names_are_named(what: str) -> None:
    kwargs = {what: {"default": 6 if what == "n_bits" else None, "gemm_9": 4, "zz": 4}}
    with pytest.raises(UnknownOpError, match=r"\['gemm_9', 'zz'\]") as info:
        build_quantized_module(mlp([6, 5, 3]), X, **kwargs)
    assert info.value.names == ["gemm_9", "zz"]
    assert "'gemm0'" in str(info.value) and "'g0'" in str(info.value)  # valid names listed
    assert isinstance(info.value, ValueError)


def test_per_op_values_are_validated() -> None:
    with pytest.raises(ArgumentError, match="op_weights"):
        n_bits_per_op({"gemm0": {"op_weights": 2.5, "op_inputs": 3}})
    with pytest.raises(QuantizedOpError, match=r"\[2, 8\]"):
        rounding_per_op({"gemm0": 12})
    with pytest.raises(QuantizedOpError, match=r"\[2, 8\]"):
        build_quantized_module(mlp([6, 5, 3]), X, rounding_threshold_bits={"y": 1})
    # weights of 1 bit are refused for PTQ in a per-op value too
    with pytest.raises(ValueError, match="op_weights=1"):
        build_quantized_module(mlp([6, 5, 3]), X, n_bits={"default": 6, "y": 1})


def test_global_forms_are_unchanged() -> None:
    assert n_bits_per_op(6) is None
    assert n_bits_per_op({"op_weights": 3, "op_inputs": 3}) is None
    assert rounding_per_op({"n_bits": 4}) is None
    assert isinstance(rounding_per_op({"y": 4}), PerOp)


def test_converter_takes_per_op_settings() -> None:
    numpy_model = NumpyModule(mlp([6, 5, 3]))
    conv = PostTrainingAffineQuantization({"default": 6, "y": 4}, numpy_model, {"y": 5})
    module = conv.quantize_module(X)
    ops = _ops(module)
    assert ops["y"].input_quant_opts.n_bits == 4
    assert ops["y"].rounding_threshold_bits["n_bits"] == 5
