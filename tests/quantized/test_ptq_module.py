"""n_bits (docs/contract.md §4.1), module input quantizers (§4.6), QuantizedModule API and errors
(§6.2, §8)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

import fhequant.torch as fhe_torch
from fhequant import QuantizedModule, build_quantized_module, serialization
from fhequant.errors import (
    ArgumentError,
    DTypeError,
    GraphInputError,
    NotCompiledError,
    QuantizationError,
    UnquantizedTensorError,
)
from fhequant.quantized import BitWidths, resolve_n_bits
from fhequant.quantized.strategies import process_initializer_ptq
from ptq_helpers import gemm_node, make_model, mlp

RNG = np.random.default_rng(5)
X = RNG.normal(size=(200, 6)).astype(np.float32)


# --- n_bits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (2, BitWidths(5, 2, 2, 5)),
        (8, BitWidths(8, 8, 8, 8)),
        ({"op_weights": 3, "op_inputs": 4}, BitWidths(5, 3, 4, 5)),
        ({"op_weights": 3, "op_inputs": 7}, BitWidths(5, 3, 7, 7)),
        (
            {"op_weights": 2, "op_inputs": 2, "model_inputs": 3, "model_outputs": 4},
            BitWidths(3, 2, 2, 4),
        ),
    ],
)
def test_n_bits_resolution(given: Any, expected: BitWidths) -> None:
    assert resolve_n_bits(given) == expected


@pytest.mark.parametrize(
    ("given", "error", "match"),
    [
        (2.5, ArgumentError, "int or a dict"),
        ("8", ArgumentError, "int or a dict"),
        (True, ArgumentError, "int or a dict"),
        ({"op_weights": 3}, QuantizationError, "op_inputs"),
        ({"op_weights": 3, "op_inputs": 3, "weights": 2}, QuantizationError, "weights"),
        ({"op_weights": 3, "op_inputs": 6, "model_outputs": 5}, QuantizationError, "at least"),
        ({"op_weights": 3.0, "op_inputs": 6}, ArgumentError, "op_weights"),
    ],
)
def test_n_bits_errors(given: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_n_bits(given)
    with pytest.raises(error):
        build_quantized_module(mlp([6, 3]), X, n_bits=given)


def test_n_bits_errors_are_builtin_types() -> None:
    with pytest.raises(TypeError):
        resolve_n_bits([8])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        resolve_n_bits({"op_inputs": 3})


# --- input quantizers (docs/contract.md §4.6) -----------------------------------------------------


def test_input_quantizer_of_a_gemm_uses_its_op_inputs_options() -> None:
    module = build_quantized_module(mlp([6, 4, 2]), X, n_bits=3)
    q = module.input_quantizers[0]
    assert q is not None
    gemm = module.quant_layers_dict["g0"][1]
    assert q.n_bits == 3  # op_inputs, not model_inputs (5)
    assert q.quant_options == gemm.input_quant_opts
    assert q.is_signed  # the data has negative values
    assert q.rmin == X.min() and q.rmax == X.max()


def test_input_quantizer_of_a_univariate_op_uses_model_inputs_signed() -> None:
    x = RNG.uniform(0.5, 2.0, size=(100, 6)).astype(np.float32)
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            gemm_node("r", "w", None, "y", "fc"),
        ],
        [("x", [None, 6])],
        [("y", [None, 2])],
        {"w": RNG.normal(size=(2, 6)).astype(np.float32)},
    )
    module = build_quantized_module(model, x, n_bits=3)
    q = module.input_quantizers[0]
    assert q is not None
    assert q.n_bits == 5  # model_inputs
    assert q.is_signed  # always signed here, even for positive data
    assert not q.is_symmetric


def test_hidden_ops_output_at_model_outputs_unsigned() -> None:
    module = build_quantized_module(mlp([6, 4, 2]), X, n_bits={"op_weights": 2, "op_inputs": 3})
    for _, op in module.quant_layers_dict.values():
        assert op.n_bits == 5
    relu = module.quant_layers_dict["a0"][1]
    assert relu.output_quant_params.offset == 0


# --- forward and errors (docs/contract.md §6.2, §8) -----------------------------------------------


@pytest.fixture(scope="module")
def module() -> QuantizedModule:
    return build_quantized_module(mlp([6, 5, 3]), X, n_bits=4)


def test_forward_is_quantize_run_dequantize(module: QuantizedModule) -> None:
    q = module.quantize_input(X[:10])
    assert q.dtype == np.int64
    y = module.forward(X[:10])
    np.testing.assert_array_equal(y, module.dequantize_output(module.quantized_forward(q)))
    assert y.dtype == np.float64
    np.testing.assert_array_equal(module(X[:10]), y)
    # int32 integers give the same result
    np.testing.assert_array_equal(
        module.quantized_forward(q.astype(np.int32)), module.quantized_forward(q)
    )
    # float64 input keeps its dtype when quantized (rint ties may differ from float32)
    assert module.quantize_input(X[:3].astype(np.float64)).dtype == np.int64


def test_forward_debug_returns_accumulators(module: QuantizedModule) -> None:
    y, tracker = module.forward(X[:4], debug=True)
    np.testing.assert_array_equal(y, module.forward(X[:4]))
    assert "accumulator" in tracker["gemm0"]
    assert all(op.debug_value_tracker is None for _, op in module.quant_layers_dict.values())


def test_module_errors(module: QuantizedModule) -> None:
    with pytest.raises(GraphInputError, match="got 2 input"):
        module.forward(X, X)
    with pytest.raises(ValueError, match="takes 1"):
        module.quantize_input(X, X)
    with pytest.raises(TypeError, match="int64"):
        module.forward(X.astype(np.int64))
    with pytest.raises(DTypeError, match="float32"):
        module.quantized_forward(X)
    with pytest.raises(ValueError, match="not a valid mode"):
        module.forward(X, fhe="fast")
    for mode in ("simulate", "execute"):
        with pytest.raises(NotCompiledError, match="compile"):
            module.forward(X, fhe=mode)
        with pytest.raises(RuntimeError):
            module.quantized_forward(module.quantize_input(X), fhe=mode)
    assert module.fhe_circuit is None


def test_output_quantizers_come_from_the_output_ops(module: QuantizedModule) -> None:
    (out_q,) = module.output_quantizers
    op = module.quant_layers_dict["y"][1]
    assert out_q.scale == op.output_quant_params.scale
    np.testing.assert_array_equal(out_q.zero_point, op.output_quant_params.zero_point)


def test_unsupported_op_is_named() -> None:
    model = make_model(
        [helper.make_node("Hardmax", ["x"], ["y"], name="hardmax")],
        [("x", [None, 6])],
        [("y", [None, 6])],
        {},
    )
    with pytest.raises(ValueError, match="Hardmax"):
        build_quantized_module(model, X, n_bits=4)


# --- torch front end -----------------------------------------------------------------------


def test_torch_module_and_its_onnx_export_give_the_same_module() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    data = torch.from_numpy(X)
    from_torch = fhe_torch.build_quantized_module(net, data, n_bits=4)
    onnx_model = fhe_torch.export_to_onnx(net, X)
    from_onnx = build_quantized_module(onnx_model, X, n_bits=4)
    np.testing.assert_array_equal(from_torch.forward(X[:20]), from_onnx.forward(X[:20]))
    # close to the float model
    with torch.no_grad():
        ref = net(data[:20]).numpy()
    assert np.abs(from_torch.forward(X[:20]) - ref).max() < 0.5


# --- serialization (docs/contract.md §6.3) --------------------------------------------------------


def test_module_json_round_trip(module: QuantizedModule) -> None:
    buffer = io.StringIO()
    module.dump(buffer)
    text = buffer.getvalue()
    assert '"fhequant_format_version": 1' in text
    loaded = QuantizedModule.load(io.StringIO(text))
    np.testing.assert_array_equal(loaded.forward(X[:10]), module.forward(X[:10]))
    assert QuantizedModule.loads(module.dumps()).ordered_module_input_names == ("x",)
    assert "pickle" not in text


def test_module_json_keys_follow_the_spec_order(module: QuantizedModule) -> None:
    keys = list(module.dump_dict())
    assert keys == [
        "_is_compiled",
        "input_quantizers",
        "output_quantizers",
        "_onnx_model",
        "_post_processing_params",
        "ordered_module_input_names",
        "ordered_module_output_names",
        "quant_layers_dict",
        "onnx_preprocessing",
    ]
    assert "QuantizedModule" in serialization.registered_classes()


def test_gather_on_an_input_runs_the_one_hot_pre_processing_also_after_loading() -> None:
    from onnx import TensorProto, numpy_helper

    table = RNG.normal(size=(10, 4)).astype(np.float32)
    w = RNG.normal(size=(3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "idx"], ["e"], name="gather"),
            gemm_node("e", "w", None, "y", "fc"),
        ],
        "g",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    idx = RNG.integers(0, 10, size=300)
    module = build_quantized_module(model, idx, n_bits=7, batch_size=64)
    assert module.onnx_preprocessing is not None
    y = module.forward(idx[:20])
    np.testing.assert_allclose(y, table[idx[:20]] @ w.T, atol=0.25)
    np.testing.assert_array_equal(QuantizedModule.loads(module.dumps()).forward(idx[:20]), y)


def test_qat_import_of_an_unquantized_model_names_the_tensors() -> None:
    from ptq_helpers import module_state

    model = mlp([6, 5, 3])
    module = build_quantized_module(model, X, n_bits=4, import_qat=True)
    with pytest.raises(UnquantizedTensorError, match=r"'a0'.*gemm1.*QuantIdentity"):
        module.forward(X[:3])
    with pytest.raises(ValueError):
        module.quantized_forward(module.quantize_input(X[:3]))
    # the QAT walk (raw floats flow downstream) streams exactly too
    streamed = build_quantized_module(
        model, iter(np.array_split(X, 7)), n_bits=4, import_qat=True, batch_size=16
    )
    assert module_state(streamed) == module_state(module)
    gemm = module.quant_layers_dict["g0"][1]
    assert gemm.input_quant_opts.is_qat


def test_clear_forward_neither_mutates_nor_returns_its_input(module: QuantizedModule) -> None:
    """The forward shares the caller's integers with its ops (no copy): they only read them."""
    q = module.quantize_input(X[:20])
    kept = q.copy()
    y = module.quantized_forward(q)
    np.testing.assert_array_equal(q, kept)
    assert not np.shares_memory(y, q)
    _, tracker = module.forward(X[:20], debug=True)
    for entry in tracker.values():
        for prepared in entry["prepared_inputs"]:
            if hasattr(prepared, "qvalues"):
                assert not np.shares_memory(prepared.qvalues, q)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(-1e6, 1e6, allow_nan=False, width=32),
            st.sampled_from([0.0, -0.0, 1e-4, -1e-4]),
        ),
        min_size=1,
        max_size=60,
    ),
    n_bits=st.integers(2, 8),
)
def test_ptq_constants_take_the_symmetry_of_the_two_percentiles(
    values: list[float], n_bits: int
) -> None:
    """The 3rd and 97th percentiles from one call decide the symmetry as two calls do."""
    arr = np.array(values, dtype=np.float32)
    v3, v97 = np.percentile(arr, 3), np.percentile(arr, 97)
    ratio = 0 if np.abs(v97) < 0.001 else np.abs(v3 / v97)
    same_sign = (v3 > 0 and v97 > 0) or (v3 < 0 and v97 < 0)
    symmetric = not (same_sign or ratio < 1 / 3 or ratio > 3)
    q = process_initializer_ptq(n_bits, arr)
    assert q.quantizer.is_symmetric == symmetric
    assert q.quantizer.is_signed == symmetric
