"""Typed errors naming the model input, and warnings for silent accuracy loss (issue 15)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fhequant import build_quantized_module, errors
from ptq_helpers import cnn, mlp

X = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
MODEL = mlp([4, 3, 2])


@pytest.fixture(scope="module")
def module() -> object:
    return build_quantized_module(MODEL, X, n_bits=4)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (X[:, :3], errors.ShapeError, r"'x'.*\(40|'x' has shape \(60, 3\).*\(N, 4\)"),
        (X[:, :, None], errors.ShapeError, r"'x'.*rank 3.*\(N, 4\)"),
        ([X[:10], X[:10, :3]], errors.ShapeError, r"batch 1.*'x'.*\(N, 4\)"),
        (np.array([["a"] * 4] * 5), errors.DTypeError, r"'x'.*dtype <U1"),
    ],
)
def test_bad_calibration_data_names_the_input(data: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        build_quantized_module(MODEL, data, n_bits=4)


def test_nhwc_data_for_a_cnn_suggests_the_transpose() -> None:
    with pytest.raises(errors.ShapeError, match=r"NHWC.*transpose\(0, 3, 1, 2\)"):
        build_quantized_module(cnn(), np.zeros((5, 8, 8, 1), np.float32), n_bits=4)


def test_torch_dataloaders_and_nested_lists_calibrate(module: object) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    expected = module.forward(X[:5])  # type: ignore[attr-defined]
    tensors = DataLoader(torch.tensor(X), batch_size=8)
    pairs = DataLoader(TensorDataset(torch.tensor(X), torch.zeros(60)), batch_size=7)
    for data in (tensors, pairs):
        got = build_quantized_module(MODEL, data, n_bits=4).forward(X[:5])
        np.testing.assert_array_equal(got, expected)
    # nested Python lists are float64 data: the same module up to float32 rounding
    from_lists = build_quantized_module(MODEL, X.tolist(), n_bits=4)
    np.testing.assert_allclose(from_lists.forward(X[:5]), expected, atol=1e-6)


def test_forward_input_errors(module: object) -> None:
    forward = module.forward  # type: ignore[attr-defined]
    with pytest.raises(errors.NonFiniteError, match="NaN"):
        forward(np.full((2, 4), np.nan, np.float32))
    with pytest.raises(errors.ShapeError, match=r"one axis short.*x\[None\]"):
        forward(X[0])
    with pytest.raises(errors.ShapeError, match=r"'x' has shape \(2, 3\).*\(N, 4\)"):
        forward(X[:2, :3])


def test_dequantize_output_with_a_wrong_shape(module: object) -> None:
    with pytest.raises(errors.ShapeError, match="dequantize_output: output 0"):
        module.dequantize_output(np.zeros((2, 5), np.int64))  # type: ignore[attr-defined]


def test_inputset_errors(module: object) -> None:
    report = module.bitwidth_report  # type: ignore[attr-defined]
    with pytest.raises(errors.GraphInputError, match="empty"):
        report(np.zeros((0, 4), np.float32))
    with pytest.raises(errors.ShapeError, match=r"'x'.*\(N, 4\)"):
        report(np.zeros((3, 5), np.float32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p_error": "0.01"}, r"p_error must be a number.*p_error=0.01"),
        ({"p_error": 2.0}, r"p_error must lie strictly between 0 and 1"),
        ({"p_error": 0.0}, r"p_error must lie strictly between 0 and 1"),
        ({"global_p_error": 1.0}, r"global_p_error must lie strictly between 0 and 1"),
        ({"global_p_error": True}, r"global_p_error must be a number"),
    ],
)
def test_p_error_outside_the_unit_interval(module: object, kwargs: dict, match: str) -> None:
    pytest.importorskip("concrete.fhe")
    with pytest.raises(errors.ConfigurationError, match=match):
        module.compile(X, **kwargs)  # type: ignore[attr-defined]


# --- warnings ------------------------------------------------------------------------------


def test_warning_categories_are_filterable() -> None:
    for category in errors.WARNINGS:
        assert issubclass(category, errors.FhequantWarning)
        assert issubclass(category, UserWarning)


def test_inf_and_clipped_inputs_warn(module: object) -> None:
    forward = module.forward  # type: ignore[attr-defined]
    with pytest.warns(errors.InputClippingWarning, match="infinite"):
        with_inf = X.copy()
        with_inf[0, 0] = np.inf
        forward(with_inf)
    with pytest.warns(errors.InputClippingWarning, match=r"outside the calibrated range"):
        forward(X * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", errors.FhequantWarning)
        forward(X)  # the calibration data itself is not clipped


def test_constant_input_and_few_rows_warn() -> None:
    with pytest.warns(errors.CalibrationWarning, match="'x' is constant"):
        build_quantized_module(MODEL, np.zeros((50, 4), np.float32), n_bits=4)
    with pytest.warns(errors.CalibrationWarning, match="only 3 calibration row"):
        build_quantized_module(MODEL, X[:3], n_bits=4)


def test_unsupported_op_error_gives_a_workaround() -> None:
    from onnx import TensorProto, helper

    from fhequant.onnx import NumpyModule

    graph = helper.make_graph(
        [helper.make_node("ReduceL2", ["x"], ["y"], name="norm", keepdims=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(errors.UnsupportedOpError) as info:
        NumpyModule(model)
    msg = str(info.value)
    assert "ReduceL2 (nodes 'norm')" in msg and "Sqrt(ReduceSum(Mul(x, x)))" in msg
    assert "'Relu'" not in msg and len(msg) < 400


def test_cli_version_and_samples_help(capsys: pytest.CaptureFixture[str]) -> None:
    import fhequant
    from fhequant.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fhequant {fhequant.__version__}"
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "about 15 s each" in " ".join(capsys.readouterr().out.split())
