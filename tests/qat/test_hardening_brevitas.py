"""A Brevitas model without a QuantIdentity in front of a layer gets a BrevitasImportWarning
naming the layer (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("brevitas")
torch = pytest.importorskip("torch")

import brevitas.nn as qnn  # noqa: E402

from fhequant.errors import BrevitasImportWarning  # noqa: E402
from fhequant.torch.brevitas import export_brevitas_qonnx  # noqa: E402

# brevitas and torch warn on import and export; only our category matters here
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore:fast_hadamard_transform:UserWarning"
)
DUMMY = [np.zeros((1, 4), np.float32)]


class _NoInputQuant(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = qnn.QuantLinear(4, 3, bias=True, weight_bit_width=4)

    def forward(self, x: object) -> object:
        return self.fc(x)


class _Quantized(_NoInputQuant):
    def __init__(self) -> None:
        super().__init__()
        self.q_in = qnn.QuantIdentity(bit_width=4, return_quant_tensor=True)

    def forward(self, x: object) -> object:
        return self.fc(self.q_in(x))


def test_missing_quant_identity_warns_naming_the_layer() -> None:
    with pytest.warns(BrevitasImportWarning, match=r"model input .* reaches layer .*QuantIdentity"):
        export_brevitas_qonnx(_NoInputQuant(), DUMMY)


def test_quantized_input_does_not_warn() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", BrevitasImportWarning)
        export_brevitas_qonnx(_Quantized(), DUMMY)
