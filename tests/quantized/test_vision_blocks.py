"""Blocks of stock vision architectures, quantized and compiled (issue 13).

Fast: a residual + global-pool block, a dense/concat block (branches of different scales,
ceil-mode pooling), a LayerNorm MLP and an attention block (one TransformerEncoderLayer over
a few tokens, through both torch exporters) quantize, and their clear outputs follow the float
model. Slow: the same block families, trained for a few seconds on sklearn's digits, compile
to FHE with ``rounding_threshold_bits``; simulation equals the clear path and the predicted
bit width equals the circuit's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fhequant import build_quantized_module


class ResidualGlobalPool(nn.Module):
    """conv-bn-relu, conv-bn + skip, relu, global average pool, linear (a ResNet block)."""

    def __init__(self, c_in: int = 1, width: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.body(h))
        return self.head(torch.flatten(self.pool(h), 1))


class DenseConcat(nn.Module):
    """Two dense layers whose outputs are concatenated with their inputs (a DenseNet block),
    a ceil-mode max pool and a global average pool."""

    def __init__(self, c_in: int = 1, growth: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, growth, 3, padding=1)
        self.conv2 = nn.Conv2d(c_in + growth, growth, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.head = nn.Linear(c_in + 2 * growth, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, torch.relu(self.conv1(x))], 1)
        h = torch.cat([h, 2.0 * torch.relu(self.conv2(h))], 1)
        h = self.pool(h)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


class SeparableSqueezeExcite(nn.Module):
    """Depthwise-separable conv with a squeeze-excite gate (a MobileNet/EfficientNet block)."""

    def __init__(self, c_in: int = 1, width: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, groups=width), nn.ReLU()
        )
        self.pointwise = nn.Conv2d(width, width, 1)
        self.squeeze = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(width, 2, 1),
            nn.ReLU(),
            nn.Conv2d(2, width, 1),
            nn.Sigmoid(),
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pointwise(self.depthwise(self.stem(x)))
        h = h * self.squeeze(h)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


class LayerNormMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttentionBlock(nn.Module):
    """An image cut into a few tokens, a linear embedding, one TransformerEncoderLayer
    (multi-head self-attention, LayerNorm, ReLU feed-forward), a mean over the tokens and a
    linear head (a ViT in miniature)."""

    def __init__(
        self, c_in: int = 1, tokens: int = 4, d_model: int = 8, classes: int = 10, side: int = 8
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.embed = nn.Linear(c_in * side * side // tokens, d_model)
        self.encoder = nn.TransformerEncoderLayer(
            d_model, 2, dim_feedforward=16, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(x.shape[0], self.tokens, -1))
        return self.head(self.encoder(h).mean(1))


def _float(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _random_model(cls: type[nn.Module], **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return cls(**kwargs).eval()


IMAGES = np.random.default_rng(0).normal(size=(64, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize(
    ("cls", "x"),
    [
        pytest.param(ResidualGlobalPool, IMAGES, id="residual-globalpool"),
        pytest.param(DenseConcat, IMAGES, id="dense-concat"),
        pytest.param(SeparableSqueezeExcite, IMAGES, id="separable-squeeze-excite"),
        pytest.param(
            LayerNormMLP,
            np.random.default_rng(1).normal(size=(64, 10)).astype(np.float32),
            id="layernorm-mlp",
        ),
    ],
)
def test_block_quantizes_and_follows_the_float_model(cls: type[nn.Module], x: np.ndarray) -> None:
    kwargs = {} if cls is LayerNormMLP else {"c_in": 3}
    model = _random_model(cls, **kwargs)
    expected = _float(model, x)
    module = build_quantized_module(model, x, n_bits=8)
    clear = module.forward(x)
    assert clear.shape == expected.shape
    spread = float(expected.max() - expected.min())
    assert np.abs(clear - expected).max() <= 0.1 * spread
    assert np.mean(clear.argmax(axis=1) == expected.argmax(axis=1)) >= 0.85


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_attention_block_quantizes_through_both_exporters(exporter: str) -> None:
    """Softmax and (dynamo) LayerNormalization as quantized ops; the legacy export's shape
    arithmetic (Shape, Slice, Cast, Sqrt of the head size) stays raw."""
    from fhequant.onnx import NumpyModule

    model = _random_model(AttentionBlock, c_in=3)
    expected = _float(model, IMAGES)
    numpy_module = NumpyModule.from_torch(model, IMAGES, exporter=exporter)  # type: ignore[arg-type]
    op_types = {n.op_type for n in numpy_module.onnx_model.graph.node}
    assert "Softmax" in op_types
    assert ("LayerNormalization" in op_types) == (exporter == "dynamo")
    module = build_quantized_module(numpy_module, IMAGES, n_bits=8)
    clear = module.forward(IMAGES)
    assert clear.shape == expected.shape
    spread = float(expected.max() - expected.min())
    assert np.abs(clear - expected).max() <= 0.1 * spread
    assert np.mean(clear.argmax(axis=1) == expected.argmax(axis=1)) >= 0.85


# --- trained blocks under FHE ---------------------------------------------------------------


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    return x, data.target.astype(np.int64)


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 3) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[i : i + 64]), yt[i : i + 64])
            loss.backward()
            opt.step()
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize(
    "cls",
    [ResidualGlobalPool, SeparableSqueezeExcite, DenseConcat],
    ids=["residual-globalpool", "separable-squeeze-excite", "dense-concat"],
)
def test_trained_block_compiles_and_simulates_exactly(cls: type[nn.Module]) -> None:
    x, y = _digits()
    torch.manual_seed(0)
    model = _train(cls(), x[:1200], y[:1200])
    calib, test = x[:200], x[1200:1240]
    module = build_quantized_module(model, calib, n_bits=4, rounding_threshold_bits=6)
    module.compile(calib)
    report = module.bitwidth_report()
    assert report.predicted_max_bit_width == module.fhe_circuit.graph.maximum_integer_bit_width()
    clear = module.forward(test)
    np.testing.assert_array_equal(module.forward(test, fhe="simulate"), clear)
    float_acc = float(np.mean(_float(model, test).argmax(1) == y[1200:1240]))
    clear_acc = float(np.mean(clear.argmax(1) == y[1200:1240]))
    print(
        f"{cls.__name__}: {report.predicted_max_bit_width} bits, accuracy float "
        f"{float_acc:.2f} clear {clear_acc:.2f}"
    )


def test_legacy_layernorm_chain_quantizes_at_4_bits() -> None:
    """The legacy export's LayerNorm (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div): at 4 bits
    some rows' sqrt(var + eps) quantize to 0; the encrypted Div divides them by the smallest
    non-zero divisor instead of refusing the calibration data."""
    from fhequant.onnx import NumpyModule

    model = _random_model(LayerNormMLP)
    x = np.random.default_rng(1).normal(size=(200, 10)).astype(np.float32)
    numpy_module = NumpyModule.from_torch(model, x, exporter="legacy")
    assert "Sqrt" in {n.op_type for n in numpy_module.onnx_model.graph.node}
    module = build_quantized_module(numpy_module, x, n_bits=4, rounding_threshold_bits=6)
    clear = module.forward(x)
    expected = _float(model, x)
    assert np.all(np.isfinite(clear))
    assert np.mean(clear.argmax(axis=1) == expected.argmax(axis=1)) >= 0.8


def test_bitwidth_report_leaves_out_raw_shape_arithmetic() -> None:
    """The legacy attention export computes batch * heads with Mul nodes on raw shapes; the
    circuit gets them as constants (its inputset has one row at a time), so the report must
    not count them: a dataset and the same rows repeated give the same report."""
    from fhequant.onnx import NumpyModule

    model = _random_model(AttentionBlock, c_in=3)
    numpy_module = NumpyModule.from_torch(model, IMAGES, exporter="legacy")
    module = build_quantized_module(numpy_module, IMAGES, n_bits=4, rounding_threshold_bits=6)
    rows = IMAGES[:8]
    once = module.bitwidth_report(rows)
    repeated = module.bitwidth_report(np.concatenate([rows] * 25))
    assert [(r.name, r.lo, r.hi) for r in once.rows] == [
        (r.name, r.lo, r.hi) for r in repeated.rows
    ]


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_trained_attention_block_compiles_and_simulates_exactly(exporter: str) -> None:
    """One encoder layer over 4 tokens: Softmax (table unit lowered to the rounding budget),
    LayerNormalization (one node with torch's default exporter; ReduceMean/Pow/Sqrt/Div with
    the legacy one) and encrypted x encrypted MatMuls."""
    from fhequant.onnx import NumpyModule

    x, y = _digits()
    torch.manual_seed(0)
    model = _train(AttentionBlock(), x[:1200], y[:1200], epochs=10)
    calib, test = x[:200], x[1200:1240]
    numpy_module = NumpyModule.from_torch(model, calib, exporter=exporter)  # type: ignore[arg-type]
    module = build_quantized_module(numpy_module, calib, n_bits=4, rounding_threshold_bits=6)
    module.compile(calib)
    report = module.bitwidth_report()
    assert report.predicted_max_bit_width == module.fhe_circuit.graph.maximum_integer_bit_width()
    # rows of the compile inputset: the circuit's widths are the observed ones, which held-out
    # rows may exceed (the softmax and variance sums); a dozen rows keep the simulation short
    sample = calib[:12]
    np.testing.assert_array_equal(module.forward(sample, fhe="simulate"), module.forward(sample))
    clear = module.forward(test)
    float_acc = float(np.mean(_float(model, test).argmax(1) == y[1200:1240]))
    clear_acc = float(np.mean(clear.argmax(1) == y[1200:1240]))
    print(
        f"attention ({exporter}): {report.predicted_max_bit_width} bits, accuracy float "
        f"{float_acc:.2f} clear {clear_acc:.2f}"
    )


@pytest.mark.slow
def test_trained_attention_block_held_out_mismatches_are_range_excursions() -> None:
    """Held-out rows that simulate differently from the clear path (seeds 0 and 1: 1 of 40
    each) are rows whose integers leave the compile inputset's observed ranges: concrete
    sizes every node from the inputset (accumulator_bounds="observed"), so a LayerNorm table
    input that reaches 68 where the inputset reached 62 overflows its 7-bit signed width.
    Every held-out row that stays inside those ranges simulates exactly. (Worst-case bounds
    would make every row exact, but this block's 12-bit LayerNorm product then finds no
    crypto parameters.)"""
    from fhequant.onnx import NumpyModule

    x, y = _digits()
    torch.manual_seed(0)
    model = _train(AttentionBlock(), x[:1200], y[:1200], epochs=10)
    calib, test = x[:200], x[1200:1240]
    numpy_module = NumpyModule.from_torch(model, calib, exporter="dynamo")  # type: ignore[arg-type]
    module = build_quantized_module(numpy_module, calib, n_bits=4, rounding_threshold_bits=6)
    module.compile(calib)
    observed = module.bitwidth_report(calib).records

    def leaves_the_ranges(row: np.ndarray) -> bool:
        records = module.bitwidth_report(row[None]).records
        return any(
            a.wc_lo is not None and (b.lo < a.lo or b.hi > a.hi)
            for a, b in zip(observed, records, strict=True)
        )

    mismatched = np.any(module.forward(test, fhe="simulate") != module.forward(test), axis=1)
    outside = np.array([leaves_the_ranges(row) for row in test])
    assert not np.any(mismatched & ~outside), np.where(mismatched & ~outside)
    print(f"held-out: {int(mismatched.sum())} mismatched, {int(outside.sum())} leave the ranges")


class PoolZoo(nn.Module):
    """Every pool variant of issue 13 in one small network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.max_ceil = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.max_dilated = nn.MaxPool2d(2, stride=1, dilation=2)
        self.avg_ceil = nn.AvgPool2d(
            2, stride=2, padding=1, ceil_mode=True, count_include_pad=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))  # (N, 2, 6, 6)
        a = self.max_ceil(self.max_dilated(h))  # (N, 2, 2, 2)
        b = self.avg_ceil(h)  # (N, 2, 4, 4)
        seq = nn.functional.max_pool1d(b.reshape(-1, 2, 16), 3, stride=2, ceil_mode=True)
        return torch.cat(
            [
                torch.flatten(nn.functional.adaptive_max_pool2d(a, 1), 1),
                torch.flatten(seq, 1),
                h.mean(dim=(2, 3)),
            ],
            1,
        )


@pytest.mark.slow
def test_pool_variants_compile_and_simulate_exactly() -> None:
    x, _ = _digits()
    model = _random_model(PoolZoo)
    calib = x[:100]
    module = build_quantized_module(model, calib, n_bits=4, rounding_threshold_bits=6)
    clear = module.forward(calib[:20])
    assert np.abs(clear - _float(model, calib[:20])).max() <= 0.25 * float(np.ptp(clear))
    module.compile(calib)
    report = module.bitwidth_report()
    assert report.predicted_max_bit_width == module.fhe_circuit.graph.maximum_integer_bit_width()
    np.testing.assert_array_equal(module.forward(calib[:20], fhe="simulate"), clear)
