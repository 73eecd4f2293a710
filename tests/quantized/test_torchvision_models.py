"""Stock torchvision classifiers quantize as exported (issue 13; slow, needs torchvision).

Each model has random weights with PyTorch's default initialisation (every module's
``reset_parameters``), takes 3x32x32 inputs, is exported as is through fhequant's torch path
(vgg11 through torch's default exporter, see EXPORTER) and quantized at 8 bits; its bit-width
report is computed and its clear 8-bit top-1 agrees with the float model on at least 90 % of 64
random inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from fhequant import build_quantized_module
from fhequant.onnx import NumpyModule

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

MODELS = [
    "resnet18",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "squeezenet1_0",
    "efficientnet_b0",
    "shufflenet_v2_x0_5",
    "regnet_x_400mf",
    "densenet121",
    "vgg11",
]
#: torch's legacy exporter refuses vgg11's AdaptiveAvgPool2d((7, 7)) of a 1x1 map (not a
#: factor of the input size); torch's default exporter writes it as GatherND + ReduceMean.
EXPORTER = {"vgg11": "dynamo"}


def _default_init(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torchvision_classifier_quantizes_and_keeps_top1(name: str) -> None:
    torch.manual_seed(0)
    model = _default_init(getattr(torchvision.models, name)(weights=None))
    x = np.random.default_rng(0).normal(size=(64, 3, 32, 32)).astype(np.float32)
    exporter = EXPORTER.get(name)
    source = model if exporter is None else NumpyModule.from_torch(model, x, exporter=exporter)
    module = build_quantized_module(source, x, n_bits=8)
    report = module.bitwidth_report(x[:8])
    assert report.rows
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    clear = module.forward(x)
    assert clear.shape == expected.shape
    agreement = float(np.mean(clear.argmax(axis=1) == expected.argmax(axis=1)))
    print(
        f"{name}: top-1 agreement {agreement:.3f}, predicted {report.predicted_max_bit_width} bits"
    )
    assert agreement >= 0.9
