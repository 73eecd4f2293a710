"""Window ops with a hostile geometry fail before allocating (issue 15).

A Conv with pads near 10^6 on a 4x4 input made numpy allocate (or try to allocate) a padded
copy of terabytes; a pool kernel, a dilation or a ConvTranspose stride of that size the same.
The float path (NumpyModule, calibration) and the quantized integer kernels check the sizes
the geometry implies first (``fhequant.kernels.limits``) and raise ShapeError naming the op.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from fhequant import build_quantized_module
from fhequant.errors import ShapeError
from fhequant.kernels import integer_conv, window_max, window_sum
from fhequant.kernels.limits import MAX_SAMPLE_ELEMENTS
from fhequant.onnx import NumpyModule
from onnx_testing import make_model

RNG = np.random.default_rng(15)
X = RNG.normal(size=(2, 1, 4, 4)).astype(np.float32)
W = RNG.normal(size=(1, 1, 3, 3)).astype(np.float32)
HUGE = 10**6


def _model(op: str, attrs: dict[str, Any], weights: bool = True) -> Any:
    inputs = ["x", "w"] if weights else ["x"]
    node = helper.make_node(op, inputs, ["y"], name=f"hostile_{op}", **attrs)
    out_types = {"y": (TensorProto.FLOAT, ["N", 1, None, None])}
    inits = {"w": W} if weights else None
    return make_model([node], {"x": X}, ["y"], inits, out_types=out_types, dynamic_batch=True)


HOSTILE = [
    ("Conv", {"pads": [HUGE] * 4}, True),
    ("Conv", {"pads": [5000] * 4}, True),  # a 10004^2 padded input, 9 taps: 0.9e9 windows
    ("Conv", {"pads": [HUGE] * 4, "dilations": [HUGE, HUGE]}, True),
    ("ConvTranspose", {"strides": [HUGE, HUGE]}, True),
    ("MaxPool", {"kernel_shape": [HUGE, HUGE], "pads": [HUGE] * 4}, False),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [2, 2, HUGE, HUGE]}, False),
]


_NAMES = {
    "Conv": "Conv",
    "ConvTranspose": "ConvTranspose",
    "MaxPool": "pool",
    "AveragePool": "pool",
}


def _peak_mib(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


@pytest.mark.parametrize(("op", "attrs", "weights"), HOSTILE)
def test_float_path_refuses_before_allocating(
    op: str, attrs: dict[str, Any], weights: bool
) -> None:
    module = NumpyModule(_model(op, attrs, weights))

    def run() -> None:
        with pytest.raises(ShapeError, match=f"{_NAMES[op]}.*values per sample"):
            module.forward(X)

    assert _peak_mib(run) < 64


@pytest.mark.parametrize(("op", "attrs", "weights"), HOSTILE[:2] + HOSTILE[4:5])
def test_calibration_refuses_before_allocating(
    op: str, attrs: dict[str, Any], weights: bool
) -> None:
    x = RNG.normal(size=(20, 1, 4, 4)).astype(np.float32)
    with pytest.raises(ShapeError, match="values per sample"):
        build_quantized_module(_model(op, attrs, weights), x, n_bits=4)


def test_integer_kernels_refuse_before_allocating() -> None:
    q = RNG.integers(0, 15, size=(2, 3, 4, 4))
    qw = RNG.integers(0, 15, size=(2, 3, 3, 3))
    with pytest.raises(ShapeError, match=r"Conv.*values per sample"):
        integer_conv(q, qw, 7, 7, pads=[HUGE] * 4)
    with pytest.raises(ShapeError, match="values per sample"):
        window_sum(q, [3, 3], [1, 1], [HUGE] * 4, 7)
    with pytest.raises(ShapeError, match="values per sample"):
        window_max(q, [HUGE, HUGE], [1, 1], [HUGE] * 4, 7)


def test_ordinary_geometries_are_far_below_the_limit() -> None:
    # a VGG-style 3x3 conv on 64 x 224 x 224 gathers 64 * 224^2 * 9 values per sample
    assert MAX_SAMPLE_ELEMENTS > 64 * 224 * 224 * 9
    module = NumpyModule(_model("Conv", {"pads": [1] * 4}, True))
    assert module.forward(X).shape == (2, 1, 4, 4)
