"""Brevitas models for the QAT tests and benchmark (trained on scikit-learn's digits)."""

from __future__ import annotations

from typing import Any

import numpy as np


def digits_split(n_train: int = 1200) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1] (float32), split into train / test by a fixed permutation."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def brevitas_mlp(bits: int = 3, hidden: int = 32, per_channel: bool = False) -> Any:
    """QuantIdentity → QuantLinear → QuantReLU → QuantLinear, all at ``bits`` (weight scales
    per output channel when ``per_channel``)."""
    import brevitas.nn as qnn
    import torch

    class QatMlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_in = qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True)
            weights = {"weight_bit_width": bits, "weight_scaling_per_output_channel": per_channel}
            self.fc1 = qnn.QuantLinear(64, hidden, bias=True, **weights)
            self.relu = qnn.QuantReLU(bit_width=bits, return_quant_tensor=True)
            self.fc2 = qnn.QuantLinear(hidden, 10, bias=True, **weights)

        def forward(self, x: Any) -> Any:
            return self.fc2(self.relu(self.fc1(self.q_in(x))))

    return QatMlp()


def brevitas_cnn(bits: int = 3, per_channel: bool = False) -> Any:
    """QuantIdentity → QuantConv2d → QuantReLU → flatten → QuantLinear on 8x8 digits (weight
    scales per output channel when ``per_channel``)."""
    import brevitas.nn as qnn
    import torch

    class QatCnn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_in = qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True)
            weights = {"weight_bit_width": bits, "weight_scaling_per_output_channel": per_channel}
            self.conv = qnn.QuantConv2d(1, 4, 3, stride=2, bias=True, **weights)
            self.relu = qnn.QuantReLU(bit_width=bits, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(36, 10, bias=True, **weights)

        def forward(self, x: Any) -> Any:
            h = self.relu(self.conv(self.q_in(x)))
            return self.fc(torch.flatten(h, 1))

    return QatCnn()


def train(model: Any, x: np.ndarray, y: np.ndarray, epochs: int = 4, seed: int = 0) -> Any:
    """A few epochs of Adam on cross-entropy (deterministic for a seed)."""
    import torch

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            out = model(xt[idx])
            out = out.value if hasattr(out, "value") else out
            torch.nn.functional.cross_entropy(out, yt[idx]).backward()
            opt.step()
    model.eval()
    return model


def torch_predict(model: Any, x: np.ndarray) -> np.ndarray:
    """The model's own float outputs (the Brevitas fake-quantized forward)."""
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(x))
    out = out.value if hasattr(out, "value") else out
    return np.asarray(out.detach().numpy())
