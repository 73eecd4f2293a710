"""Whole torch models: exported (fhequant.torch.export_to_onnx), imported, and compared with
onnxruntime (run sample by sample: the export has batch 1) and torch on a batch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from fhequant.errors import GraphInputError
from fhequant.onnx import NumpyModule
from fhequant.torch import export_to_onnx

torch.manual_seed(0)
RNG = np.random.default_rng(3)


def ort_per_sample(module: NumpyModule, original: bytes, *inputs: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    rows = [
        sess.run(None, {n: x[[i]] for n, x in zip(names, inputs, strict=True)})[0]
        for i in range(inputs[0].shape[0])
    ]
    return np.concatenate(rows, axis=0)


def compare(model: nn.Module, *inputs: np.ndarray) -> NumpyModule:
    model.eval()
    proto = export_to_onnx(model, inputs if len(inputs) > 1 else inputs[0])
    module = NumpyModule(proto)
    ours = module(*inputs)
    ref = ort_per_sample(module, proto.SerializeToString(), *inputs)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        expected = model(*(torch.from_numpy(x) for x in inputs)).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
    return module


ACTIVATIONS = [
    nn.ReLU(),
    nn.Sigmoid(),
    nn.Tanh(),
    nn.ELU(alpha=0.7),
    nn.SELU(),
    nn.CELU(alpha=1.3),
    nn.LeakyReLU(0.05),
    nn.PReLU(),
    nn.Softplus(),
    nn.Softsign(),
    nn.Hardsigmoid(),
    nn.Hardswish(),
    nn.SiLU(),
    nn.GELU(),
    nn.Mish(),
    nn.ReLU6(),
    nn.Hardtanh(-0.5, 0.7),
    nn.Threshold(0.0, 0.0),
    nn.LogSigmoid(),
    nn.Softmax(dim=1),
]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: type(a).__name__)
def test_mlp_with_activation(act: nn.Module) -> None:
    model = nn.Sequential(nn.Linear(6, 8), act, nn.Linear(8, 3))
    x = RNG.normal(size=(16, 6)).astype(np.float32)
    compare(model, x)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.pool2 = nn.AvgPool2d(3, stride=2, ceil_mode=True)  # a partial last window
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool2(torch.relu(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))


def test_cnn_with_batchnorm_and_pools() -> None:
    model = SmallCNN()
    for bn in (model.bn1, model.bn2):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = RNG.normal(size=(12, 2, 8, 8)).astype(np.float32)
    module = compare(model, x)
    assert "Conv" in [n.op_type for n in module.nodes]


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = self.conv2(y) + x
        return self.fc(self.pool(torch.relu(y)).flatten(1))


def test_residual_block() -> None:
    x = RNG.normal(size=(10, 3, 6, 6)).astype(np.float32)
    compare(Residual(), x)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fa = nn.Linear(4, 5)
        self.fb = nn.Linear(3, 5)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fa(left)) * self.fb(right) - left.sum(dim=1, keepdim=True)


def test_two_input_model() -> None:
    a = RNG.normal(size=(9, 4)).astype(np.float32)
    b = RNG.normal(size=(9, 3)).astype(np.float32)
    module = compare(TwoInputs(), a, b)
    assert module.input_names == ("left", "right")


def test_conv1d_model() -> None:
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AvgPool1d(2),
        nn.Flatten(),
        nn.Linear(4 * 4, 2),
    )
    x = RNG.normal(size=(7, 2, 16)).astype(np.float32)
    compare(model, x)


def test_matmul_add_from_a_3d_linear_is_one_gemm() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    x = RNG.normal(size=(5, 2, 4)).astype(np.float32)
    module = compare(model, x)
    assert [n.op_type for n in module.nodes] == ["Gemm", "Relu"]


def test_export_conventions() -> None:
    model = TwoInputs().eval()
    a = RNG.normal(size=(9, 4))  # float64: the dummy input is cast to float32
    b = RNG.normal(size=(9, 3))
    proto = export_to_onnx(model, (a, b))
    assert proto.opset_import[0].domain == "" and proto.opset_import[0].version == 14
    assert [i.name for i in proto.graph.input] == ["left", "right"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 4]
    assert proto.graph.input[0].type.tensor_type.elem_type == 1
    module = NumpyModule.from_torch(model, (torch.from_numpy(a), b))
    out = module(a.astype(np.float32), b.astype(np.float32))
    assert out.shape == (9, 5)


class ViewFlatten(nn.Module):
    """The common ``x.view(x.size(0), -1)`` idiom, and a reshape keyed on another tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        z = self.fc(y.view(y.size(0), -1))
        return z.reshape(x.shape[0], 3, 1).flatten(1) * y.size(1)


def test_view_on_the_batch_size_works_at_any_batch() -> None:
    model = ViewFlatten().eval()
    x = RNG.normal(size=(7, 1, 6, 6)).astype(np.float32)
    module = compare(model, x)
    kinds = [n.op_type for n in module.nodes]
    assert kinds == ["Conv", "Relu", "Reshape", "Gemm", "Reshape", "Flatten", "Mul"]
    shapes = [module.initializers[n.inputs[1]] for n in module.nodes if n.op_type == "Reshape"]
    assert [s.tolist() for s in shapes] == [[0, -1], [0, 3, 1]]
    assert module(x[:1]).shape == (1, 3)


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, unused: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_export_rejects_unused_inputs() -> None:
    x = RNG.normal(size=(4, 3)).astype(np.float32)
    with pytest.raises(GraphInputError, match=r"\['unused'\]"):
        export_to_onnx(Unused(), (x, x))
    with pytest.raises(GraphInputError, match="3 inputs given"):
        export_to_onnx(nn.Linear(3, 2), (x, x, x))


def test_layer_norm_mlp() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2))
    x = RNG.normal(size=(11, 6)).astype(np.float32)
    compare(model, x)


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(idx).sum(dim=1))


def test_embedding_becomes_onehot_matmul() -> None:
    idx = RNG.integers(0, 7, size=(10, 3)).astype(np.int64)
    module = compare(Embed(), idx)
    assert module.onnx_preprocessing is not None
    assert module.nodes[0].op_type == "MatMul"
    onehot = module.preprocess_inputs(idx)[0]
    assert onehot.shape == (10, 3, 7) and onehot.dtype == np.float32


def test_unfold_decomposition() -> None:
    """torch exports nn.Unfold at opset 14 as Shape/Range/Gather/Pad/Transpose/Reshape; the
    shape arithmetic on static dims folds away, the batch dim becomes a Reshape 0."""
    model = nn.Sequential(nn.Unfold(2, padding=1, stride=2), nn.Flatten(), nn.Linear(8 * 9, 2))
    x = RNG.normal(size=(5, 2, 5, 5)).astype(np.float32)
    module = compare(model, x)
    kinds = [n.op_type for n in module.nodes]
    assert "Gather" in kinds and "Reshape" in kinds
    assert "Shape" not in kinds and "Range" not in kinds
