"""compile_brevitas_qat_model on Brevitas models trained on scikit-learn's digits
(docs/contract.md §6.1)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

pytest.importorskip("brevitas")
torch = pytest.importorskip("torch")

from fhequant import compile_brevitas_qat_model, compile_torch_model  # noqa: E402
from fhequant.errors import MissingDependencyError  # noqa: E402
from qat_models import brevitas_cnn, brevitas_mlp, digits_split, torch_predict, train  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return digits_split()


@pytest.fixture(scope="module")
def trained_mlp(digits: Any) -> Any:
    x_train, y_train, _, _ = digits
    torch.manual_seed(0)
    return train(brevitas_mlp(bits=3), x_train, y_train, epochs=3)


@pytest.fixture(scope="module")
def compiled_mlp(trained_mlp: Any, digits: Any) -> Any:
    return compile_brevitas_qat_model(trained_mlp, digits[0])


def test_mlp_clear_accuracy_matches_brevitas(trained_mlp: Any, compiled_mlp: Any, digits: Any):
    _, _, x_test, y_test = digits
    brevitas_out = torch_predict(trained_mlp, x_test)
    clear_out = compiled_mlp.forward(x_test)
    acc_brevitas = float((brevitas_out.argmax(1) == y_test).mean())
    acc_clear = float((clear_out.argmax(1) == y_test).mean())
    assert acc_brevitas > 0.7  # the model did learn something
    assert abs(acc_clear - acc_brevitas) <= 0.01
    # Every Quant node is reproduced exactly: the outputs agree up to float rounding.
    np.testing.assert_allclose(clear_out, brevitas_out, atol=1e-4)


def test_mlp_structure_and_bit_widths(compiled_mlp: Any) -> None:
    types = [type(op).__name__ for _, op in compiled_mlp.quant_layers_dict.values()]
    assert types == [
        "QuantizedBrevitasQuant",
        "QuantizedGemm",
        "QuantizedRelu",
        "QuantizedBrevitasQuant",
        "QuantizedGemm",
    ]
    # The 3-bit Brevitas input quantizer is the module's input quantizer (docs/contract.md §4.6).
    q_in = compiled_mlp.input_quantizers[0]
    assert q_in.n_bits == 3 and q_in.is_precomputed_qat
    weights = [
        op.constant_inputs[1]
        for _, op in compiled_mlp.quant_layers_dict.values()
        if type(op).__name__ == "QuantizedGemm"
    ]
    for w in weights:
        assert w.quantizer.is_precomputed_qat and w.quantizer.n_bits == 3
        assert np.abs(w.qvalues).max() <= 3  # narrow signed 3-bit weights
    report = compiled_mlp.bitwidth_report()
    assert (
        report.predicted_max_bit_width == compiled_mlp.fhe_circuit.graph.maximum_integer_bit_width()
    )


def test_mlp_simulate_matches_clear(compiled_mlp: Any, digits: Any) -> None:
    x = digits[2][:40]
    q = compiled_mlp.quantize_input(x)
    np.testing.assert_array_equal(
        compiled_mlp.quantized_forward(q, fhe="simulate"), compiled_mlp.quantized_forward(q)
    )


def test_cnn_compiles_and_simulates(digits: Any) -> None:
    x_train, y_train, x_test, _ = digits
    images = x_train[:300].reshape(-1, 1, 8, 8)
    torch.manual_seed(1)
    model = train(brevitas_cnn(bits=3), images, y_train[:300], epochs=1, seed=1)
    module = compile_brevitas_qat_model(
        model, images, n_bits={"model_inputs": 8, "model_outputs": 8}
    )
    types = [type(op).__name__ for _, op in module.quant_layers_dict.values()]
    assert "QuantizedConv" in types
    x = x_test[:10].reshape(-1, 1, 8, 8)
    np.testing.assert_allclose(module.forward(x), torch_predict(model, x), atol=1e-4)
    np.testing.assert_array_equal(module.forward(x, fhe="simulate"), module.forward(x))


def test_per_channel_weight_scales(digits: Any) -> None:
    """Per-output-channel weight scales: (O, 1) under transB for Linear, (O, 1, 1, 1) for
    Conv, applied per output column / channel."""
    x_train, y_train, x_test, _ = digits
    torch.manual_seed(2)
    mlp = train(brevitas_mlp(bits=3, per_channel=True), x_train, y_train, epochs=1, seed=2)
    module = compile_brevitas_qat_model(mlp, x_train)
    gemm_scales = [
        np.shape(op.constant_inputs[1].quantizer.scale)
        for _, op in module.quant_layers_dict.values()
        if type(op).__name__ == "QuantizedGemm"
    ]
    assert gemm_scales == [(32, 1), (10, 1)]
    np.testing.assert_allclose(module.forward(x_test), torch_predict(mlp, x_test), atol=1e-4)
    x = x_test[:20]
    np.testing.assert_array_equal(module.forward(x, fhe="simulate"), module.forward(x))

    images = x_train[:300].reshape(-1, 1, 8, 8)
    cnn = train(brevitas_cnn(bits=3, per_channel=True), images, y_train[:300], epochs=1, seed=2)
    module = compile_brevitas_qat_model(cnn, images, n_bits={"model_inputs": 8, "model_outputs": 8})
    x = x_test[:10].reshape(-1, 1, 8, 8)
    np.testing.assert_allclose(module.forward(x), torch_predict(cnn, x), atol=1e-4)
    np.testing.assert_array_equal(module.forward(x, fhe="simulate"), module.forward(x))


def test_output_onnx_file_is_written(trained_mlp: Any, digits: Any, tmp_path: Any) -> None:
    import onnx

    from fhequant.torch.brevitas import export_brevitas_qonnx

    path = tmp_path / "qat.onnx"
    model = export_brevitas_qonnx(trained_mlp, [digits[0][:1]], output_onnx_file=str(path))
    saved = onnx.load(str(path))
    assert [n.op_type for n in saved.graph.node] == [n.op_type for n in model.graph.node]
    inits = {i.name for i in saved.graph.initializer}
    assert [i.name for i in saved.graph.input if i.name in inits] == []
    assert {n.domain for n in saved.graph.node if n.op_type == "Quant"} == {
        "qonnx.custom_op.general"
    }


def test_entry_point_errors(trained_mlp: Any, digits: Any) -> None:
    x = digits[0][:20]
    with pytest.raises(ValueError, match="compile_brevitas_qat_model"):
        compile_torch_model(trained_mlp, x)
    plain = torch.nn.Sequential(torch.nn.Linear(64, 10))
    with pytest.raises(ValueError, match="no Brevitas layer"):
        compile_brevitas_qat_model(plain, x)
    with pytest.raises(ValueError, match="model_inputs"):
        compile_brevitas_qat_model(trained_mlp, x, n_bits={"op_weights": 3, "op_inputs": 3})


def test_missing_brevitas_raises_install_hint(trained_mlp: Any, monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "brevitas.export", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'fhequant\[qat\]'") as info:
        compile_brevitas_qat_model(trained_mlp, np.zeros((4, 64), dtype=np.float32))
    assert isinstance(info.value, ImportError)
