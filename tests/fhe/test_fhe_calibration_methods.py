"""Models calibrated with ``calibration=`` methods and per-channel weights compile to FHE:
simulate == clear, predicted bit width == circuit, the same PBS count as min/max."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cost_checks import assert_pbs_predicted
from fhequant import build_quantized_module
from ptq_helpers import cnn, mlp

RNG = np.random.default_rng(7)
X_MLP = RNG.normal(size=(200, 12)).astype(np.float32)
X_CNN = RNG.normal(size=(60, 1, 8, 8)).astype(np.float32)

CALIBRATIONS: list[Any] = [
    {"per_channel": True},
    {"weights": "mse", "activations": "mse", "per_channel": True},
    {"activations": "percentile", "weights": "mse", "bias_correction": True},
    {"weights": "mse", "activations": "mse", "per_channel": "asymmetric", "bias_correction": True},
]


def _compiled(model: Any, x: np.ndarray, calibration: Any, rounding: Any) -> Any:
    module = build_quantized_module(
        model, x, n_bits=3, calibration=calibration, rounding_threshold_bits=rounding
    )
    module.compile(x)
    report = module.bitwidth_report()
    circuit = module.fhe_circuit
    assert report.predicted_max_bit_width == circuit.graph.maximum_integer_bit_width()
    assert_pbs_predicted(module)
    q = module.quantize_input(x[:20])
    np.testing.assert_array_equal(
        module.quantized_forward(q, fhe="simulate"), module.quantized_forward(q)
    )
    return module


@pytest.mark.parametrize(
    ("calibration", "rounding"),
    [
        *((c, None) for c in CALIBRATIONS),
        pytest.param(CALIBRATIONS[1], 4, marks=pytest.mark.slow),
    ],
)
def test_mlp_methods_compile(calibration: Any, rounding: Any) -> None:
    model = mlp([12, 10, 4], seed=2)
    module = _compiled(model, X_MLP, calibration, rounding)
    minmax = _compiled(model, X_MLP, None, rounding)
    pbs = module.fhe_circuit.programmable_bootstrap_count
    if rounding is None:
        # (with rounding, other ranges may need other roundings: more or fewer PBS)
        assert pbs == minmax.fhe_circuit.programmable_bootstrap_count
    if calibration.get("per_channel"):
        _, gemm = module.quant_layers_dict["g0"]
        assert np.shape(gemm.constant_inputs[1].quantizer.scale) == (10, 1)
        zp_shape = (10, 1) if calibration["per_channel"] == "asymmetric" else ()
        assert np.shape(gemm.constant_inputs[1].quantizer.zero_point) == zp_shape


@pytest.mark.slow
@pytest.mark.parametrize("mode", [True, "asymmetric"])
def test_cnn_per_channel_compiles(mode: Any) -> None:
    module = _compiled(cnn(seed=1), X_CNN, {"per_channel": mode, "weights": "mse"}, None)
    minmax = _compiled(cnn(seed=1), X_CNN, None, None)
    pbs = module.fhe_circuit.programmable_bootstrap_count
    assert pbs == minmax.fhe_circuit.programmable_bootstrap_count
    _, conv = module.quant_layers_dict["c1"]
    assert np.shape(conv.constant_inputs[1].quantizer.scale) == (4, 1, 1, 1)


@pytest.mark.slow
def test_asymmetric_per_channel_worst_case_bounds() -> None:
    """Worst-case accumulator bounds of per-channel zero points (taken on the centred
    weights) hold for any input integers: compiled with them, random inputs simulate ==
    clear, and the worst case is at least the observed width."""
    model = mlp([12, 10, 4], seed=2)
    calibration = {"per_channel": "asymmetric", "weights": "mse"}
    module = build_quantized_module(model, X_MLP, n_bits=3, calibration=calibration)
    observed = module.bitwidth_report(X_MLP, accumulator_bounds="observed")
    module.compile(X_MLP, accumulator_bounds="worst_case")
    bits = module.bitwidth_report().predicted_max_bit_width
    assert bits == module.fhe_circuit.graph.maximum_integer_bit_width()
    assert bits == observed.worst_case_max_bit_width >= observed.observed_max_bit_width
    lo, hi = module.input_quantizers[0].clip_bounds()
    rand = np.random.default_rng(2).integers(lo, hi + 1, size=(30, 12))
    np.testing.assert_array_equal(
        module.quantized_forward(rand, fhe="simulate"), module.quantized_forward(rand)
    )
