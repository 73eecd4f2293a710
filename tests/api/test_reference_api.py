"""Concrete ML's public API below the compile functions (issue 14): ops driven one by one,
constant inputs by the reference's names, attribute checks at construction, NumpyModule from a
torch module, the PTQ converter classes, the module's reports and the reference-named float
functions."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from fhequant.errors import (
    ConfigurationError,
    GraphInputError,
    NotCompiledError,
    OnnxImportError,
    QuantizedOpError,
)
from fhequant.onnx import ONNX_OPS, NumpyModule, ops_impl
from fhequant.quantization import QuantizedArray
from fhequant.quantized import (
    PostTrainingAffineQuantization,
    PostTrainingQATImporter,
    QuantizedModule,
    build_quantized_module,
)
from fhequant.quantized.ops import (
    QuantizedAdd,
    QuantizedAvgPool,
    QuantizedBatchNormalization,
    QuantizedBrevitasQuant,
    QuantizedConv,
    QuantizedGemm,
    QuantizedMaxPool,
    QuantizedRelu,
    QuantizedSub,
)
from quantized_ops_helpers import qa_float

RNG = np.random.default_rng(14)
X = RNG.normal(size=(64, 6)).astype(np.float32)


class _Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc1 = torch.nn.Linear(6, 5)
        self.fc2 = torch.nn.Linear(5, 3)

    def forward(self, x: Any) -> Any:
        return self.fc2(torch.relu(self.fc1(x)))


# --- ops are callable ----------------------------------------------------------------------


def test_op_call_runs_q_impl_with_attribute_overrides() -> None:
    op = QuantizedRelu(8, "relu")
    x = qa_float(np.linspace(-2, 2, 9), 8, signed=True)
    op.calibrate(x.values)
    via_call = op(x)
    via_q_impl = op.q_impl(x)
    assert isinstance(via_call, QuantizedArray)
    np.testing.assert_array_equal(via_call.qvalues, via_q_impl.qvalues)
    gemm = QuantizedGemm(8, "g", constant_inputs={"b": qa_float(np.eye(3), 8, signed=True)})
    a = qa_float(RNG.normal(size=(4, 3)), 8, signed=True)
    gemm.calibrate(a.values)
    np.testing.assert_array_equal(gemm(a).qvalues, gemm.q_impl(a).qvalues)
    assert QuantizedGemm.op_type() == "Gemm" and gemm.op_type() == "Gemm"
    prepared = op.prepare_output(np.array([0.5, 1.5]))
    np.testing.assert_array_equal(
        prepared.qvalues, op.make_output_quant_array(np.array([0.5, 1.5])).qvalues
    )


# --- constant_inputs keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "reference_key", "onnx_key", "index"),
    [
        (QuantizedGemm, "b", "B", 1),
        (QuantizedGemm, "c", "C", 2),
        (QuantizedAdd, "b", "B", 1),
        (QuantizedSub, "b", "B", 1),
        (QuantizedBatchNormalization, "bias", "B", 2),
    ],
)
def test_constant_inputs_by_reference_name_onnx_name_or_index(
    cls: Any, reference_key: str, onnx_key: str, index: int
) -> None:
    value = np.ones((3, 3)) if (cls, index) == (QuantizedGemm, 1) else np.ones(3)
    for key in (reference_key, onnx_key, index, str(index)):
        op = cls.__new__(cls)
        cls.__init__(op, 8, "op", constant_inputs={key: value})
        assert list(op.constant_inputs) == [index]


def test_reference_names_give_the_same_gemm_as_indices() -> None:
    w = qa_float(RNG.normal(size=(3, 2)), 6, signed=True, symmetric=True)
    bias = qa_float(RNG.normal(size=(2,)), 6, signed=True, symmetric=True)
    a = qa_float(RNG.normal(size=(8, 3)), 6, signed=True)
    by_name = QuantizedGemm(6, "g", constant_inputs={"b": w, "c": bias})
    by_index = QuantizedGemm(6, "g", constant_inputs={1: w, 2: bias})
    by_name.calibrate(a.values)
    by_index.calibrate(a.values)
    np.testing.assert_array_equal(by_name(a).qvalues, by_index(a).qvalues)


def test_unknown_or_duplicate_constant_key_is_a_typed_error() -> None:
    with pytest.raises(QuantizedOpError, match=r"QuantizedGemm 'g'.*'w'.*\['a', 'b', 'c'\]"):
        QuantizedGemm(8, "g", constant_inputs={"w": np.ones((2, 2))})
    with pytest.raises(QuantizedOpError, match="another key"):
        QuantizedGemm(8, "g", constant_inputs={"b": np.ones((2, 2)), "B": np.ones((2, 2))})


# --- attributes checked at construction ------------------------------------------------------


def _conv_weights() -> QuantizedArray:
    return qa_float(RNG.normal(size=(2, 1, 3, 3)), 6, signed=True, symmetric=True)


@pytest.mark.parametrize(
    ("build", "attribute"),
    [
        (
            lambda: QuantizedConv(6, "c", constant_inputs={1: _conv_weights()}, strides=(1,)),
            "strides",
        ),
        (
            lambda: QuantizedConv(6, "c", constant_inputs={1: _conv_weights()}, pads=(1, 1, 1)),
            "pads",
        ),
        (
            lambda: QuantizedConv(6, "c", constant_inputs={1: _conv_weights()}, dilations=(1,)),
            "dilations",
        ),
        (lambda: QuantizedAvgPool(6, "p", kernel_shape=(2, 2), strides=(2, 2, 2)), "strides"),
        (lambda: QuantizedMaxPool(6, "p", kernel_shape=(2, 2), pads=(0, 0)), "pads"),
        (lambda: QuantizedMaxPool(6, "p", kernel_shape=(2, 2.5)), "kernel_shape"),
        (lambda: QuantizedGemm(6, "g", transB=2), "transB"),
        (
            lambda: QuantizedBrevitasQuant(
                6, "q", constant_inputs={1: 0.5, 2: 0.0, 3: 4.0}, signed=5
            ),
            "signed",
        ),
    ],
)
def test_bad_attributes_are_rejected_at_construction(build: Any, attribute: str) -> None:
    with pytest.raises(QuantizedOpError, match=rf"'[a-z]'.*{attribute}"):
        build()


def test_valid_window_attributes_are_accepted() -> None:
    QuantizedConv(6, "c", constant_inputs={1: _conv_weights()}, strides=(2, 2), pads=(1, 1, 1, 1))
    QuantizedMaxPool(6, "p", kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0))
    QuantizedBrevitasQuant(6, "q", constant_inputs={1: 0.5, 2: 0.0, 3: 4.0}, signed=1)


# --- NumpyModule -----------------------------------------------------------------------------


def test_numpy_module_from_torch_with_dummy_input(tmp_path: Any) -> None:
    model = _Mlp().eval()
    numpy_module = NumpyModule(model, torch.tensor(X[:2]), tmp_path)
    expected = model(torch.tensor(X)).detach().numpy()
    np.testing.assert_allclose(numpy_module(X), expected, rtol=1e-5, atol=1e-5)
    saved = onnx.load(str(tmp_path / "_Mlp.onnx"))
    assert [n.op_type for n in saved.graph.node].count("Gemm") == 2
    # the ONNX forms still work, and give the same graph
    again = NumpyModule(numpy_module.onnx_model)
    np.testing.assert_array_equal(again(X), numpy_module(X))
    from fhequant.torch.numpy_module import NumpyModule as TorchNumpyModule

    assert TorchNumpyModule is NumpyModule


def test_numpy_module_dummy_input_rules() -> None:
    with pytest.raises(GraphInputError, match="dummy_input"):
        NumpyModule(_Mlp())
    onnx_model = NumpyModule(_Mlp(), X[:1]).onnx_model
    with pytest.raises(GraphInputError, match="dummy_input"):
        NumpyModule(onnx_model, X[:1])


# --- the PTQ converter classes ---------------------------------------------------------------


def test_post_training_affine_quantization_matches_build_quantized_module() -> None:
    numpy_module = NumpyModule(_Mlp(), X[:1])
    signature = inspect.signature(PostTrainingAffineQuantization)
    assert list(signature.parameters) == [
        "n_bits",
        "numpy_model",
        "rounding_threshold_bits",
        "is_signed",
    ]
    converter = PostTrainingAffineQuantization(6, numpy_module, rounding_threshold_bits=7)
    assert converter.n_bits_op_inputs == 6 and converter.n_bits_model_outputs >= 6
    module = converter.quantize_module(X)
    assert isinstance(module, QuantizedModule)
    expected = build_quantized_module(numpy_module, X, n_bits=6, rounding_threshold_bits=7)
    np.testing.assert_array_equal(module.forward(X), expected.forward(X))
    with pytest.raises(GraphInputError, match="1 input"):
        converter.quantize_module(X, X)
    with pytest.raises(GraphInputError, match="NumpyModule"):
        PostTrainingAffineQuantization(6, _Mlp())


def test_post_training_qat_importer_is_the_qat_walk() -> None:
    numpy_module = NumpyModule(_Mlp(), X[:1])
    module = PostTrainingQATImporter(4, numpy_module).quantize_module(X)
    expected = build_quantized_module(numpy_module, X, n_bits=4, import_qat=True)
    assert [type(op).__name__ for _, op in module.quant_layers_dict.values()] == [
        type(op).__name__ for _, op in expected.quant_layers_dict.values()
    ]
    assert all(
        op.input_quant_opts.is_qat
        for _, op in module.quant_layers_dict.values()
        if type(op).__name__ == "QuantizedGemm"
    )


# --- QuantizedModule -------------------------------------------------------------------------


def test_module_reports_and_settings() -> None:
    module = build_quantized_module(_Mlp(), X, n_bits=4)
    assert module.bitwidth_and_range_report() is None
    with pytest.raises(NotCompiledError, match="compile"):
        module.check_model_is_compiled()
    with pytest.raises(ConfigurationError, match="GPU"):
        module.compile(X, device="cuda")
    module.post_processing_params = {"k": 1}
    assert module.post_processing_params == {"k": 1}
    assert QuantizedModule.loads(module.dumps()).post_processing_params == {"k": 1}


def test_set_reduce_sum_copy_sets_every_reduce_sum() -> None:
    class Summer(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return torch.relu(x).sum(dim=1, keepdim=True)

    module = build_quantized_module(Summer(), X, n_bits=5)
    sums = [op for _, op in module.quant_layers_dict.values() if hasattr(op, "copy_inputs")]
    assert sums and not any(op.copy_inputs for op in sums)
    module.set_reduce_sum_copy()
    assert all(op.copy_inputs for op in sums)


def test_compiled_module_reports_ranges_and_bit_widths() -> None:
    module = build_quantized_module(_Mlp(), X, n_bits=3)
    module.compile(X[:20], device="cpu")
    module.check_model_is_compiled()
    report = module.bitwidth_and_range_report()
    assert report is not None and report
    gemms = [
        op.op_instance_name
        for _, op in module.quant_layers_dict.values()
        if type(op).__name__ == "QuantizedGemm"
    ]
    assert set(gemms) <= set(report)
    for entry in report.values():
        lo, hi = entry["range"]
        assert lo <= hi and entry["bitwidth"] >= 1
    assert max(e["bitwidth"] for e in report.values()) <= (
        module.fhe_circuit.graph.maximum_integer_bit_width()
    )


def test_inconsistent_module_layout_is_rejected() -> None:
    module = build_quantized_module(_Mlp(), X, n_bits=4)
    layers = module.quant_layers_dict
    inputs, outputs = module.ordered_module_input_names, module.ordered_module_output_names
    QuantizedModule(inputs, outputs, layers)  # consistent
    with pytest.raises(GraphInputError, match="together"):
        QuantizedModule(inputs, None, layers)
    with pytest.raises(GraphInputError, match="neither module inputs"):
        QuantizedModule(("other",), outputs, layers)
    with pytest.raises(GraphInputError, match="not produced"):
        QuantizedModule(inputs, ("nowhere",), layers)
    QuantizedModule()  # empty, to load into


# --- the reference-named float functions -----------------------------------------------------


def test_reference_float_functions_return_tuples_of_the_registry_results() -> None:
    a = RNG.normal(size=(4, 3))
    b = RNG.normal(size=(3, 2))
    c = RNG.normal(size=(2,))
    (y,) = ops_impl.numpy_gemm(a, b, c, alpha=1.0, beta=1.0)
    np.testing.assert_allclose(y, a @ b + c, rtol=1e-5)
    (r,) = ops_impl.numpy_relu(a)
    np.testing.assert_array_equal(r, np.maximum(a, 0))
    (g,) = ops_impl.numpy_greater(a, 0.0)
    assert g.dtype == np.bool_
    (gf,) = ops_impl.numpy_greater_float(a, 0.0)
    assert gf.dtype == np.float64
    np.testing.assert_array_equal(gf, g.astype(np.float64))
    (cat,) = ops_impl.numpy_concatenate(a, a, axis=0)
    assert cat.shape == (8, 3)
    with pytest.raises(OnnxImportError, match="unknown attribute"):
        ops_impl.numpy_relu(a, alpha=1.0)


def test_every_reference_function_runs_a_registered_op() -> None:
    for name, ref in ops_impl.REFERENCE_FUNCTIONS.items():
        function = getattr(ops_impl, name)
        assert function.__name__ == name
        assert ref.op_type in ONNX_OPS
        arity = len([a for a in ref.args if not a.startswith("*")])
        assert arity <= len(ONNX_OPS[ref.op_type].input_names) or ONNX_OPS[ref.op_type].is_variadic
    assert ops_impl.ONNX_OPS_TO_NUMPY_IMPL["Gemm"] is ops_impl.numpy_gemm


def test_compile_brevitas_qat_model_is_importable_from_torch_compile() -> None:
    from fhequant.torch import compile_brevitas_qat_model as from_package
    from fhequant.torch.compile import compile_brevitas_qat_model

    assert compile_brevitas_qat_model is from_package
    with pytest.raises(ImportError):
        from fhequant.torch.compile import no_such_name  # noqa: F401
