"""``calibration=``: methods per model and per op through the calibration walk."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from fhequant import build_quantized_module
from fhequant.errors import CalibrationConfigError
from fhequant.quantization import (
    QuantizationOptions,
    StatisticSpec,
    TensorStatistic,
    register_statistic,
)
from fhequant.quantization.tensor_stats import STATISTICS
from fhequant.quantized.calibration.methods import resolve_calibration
from fhequant.serialization import loads
from ptq_helpers import assert_same_module, cnn, mlp, module_state

RNG = np.random.default_rng(19)
X_MLP = RNG.standard_t(3, size=(700, 12)).astype(np.float32)
X_CNN = RNG.normal(size=(120, 1, 8, 8)).astype(np.float32)

METHODS: list[Any] = [
    "percentile",
    {"method": "percentile", "percentile": 99.0},
    "mse",
    "entropy",
    {"activations": "entropy", "weights": "mse"},
    {"activations": "mse", "ops": {"gemm1": "percentile", "act0": {"activations": "minmax"}}},
    {"per_channel": True},
    {"weights": "mse", "per_channel": True, "bias_correction": True},
    {"weights": "mse", "per_channel": "asymmetric", "bias_correction": True},
    {"bias_correction": True, "ops": {"gemm1": {"bias_correction": False}}},
]


def _irregular(x: np.ndarray, sizes: tuple[int, ...] = (1, 30, 7, 64, 200, 3)) -> Iterator[Any]:
    start, i = 0, 0
    while start < len(x):
        end = min(len(x), start + sizes[i % len(sizes)])
        yield x[start:end]
        start, i = end, i + 1


def _weights(module: Any) -> list[Any]:
    return [
        np.asarray(op.constant_inputs[1].qvalues).tolist()
        for _, op in module.quant_layers_dict.values()
        if 1 in op.constant_inputs and hasattr(op.constant_inputs[1], "qvalues")
    ]


def test_default_is_minmax() -> None:
    model = mlp([12, 16, 8, 3], seed=1)
    ref = build_quantized_module(model, X_MLP, n_bits=3)
    for calibration in (None, "minmax", {"method": "minmax"}, {"activations": "minmax"}):
        module = build_quantized_module(model, X_MLP, n_bits=3, calibration=calibration)
        assert_same_module(ref, module, X_MLP[:50])
        assert _weights(ref) == _weights(module)


@pytest.mark.parametrize("calibration", METHODS)
def test_methods_streamed_equal_whole(calibration: Any) -> None:
    model = mlp([12, 16, 8, 3], seed=1)
    whole = build_quantized_module(model, X_MLP, n_bits=3, calibration=calibration)
    for data, batch in ((_irregular(X_MLP), 64), (X_MLP, 33)):
        streamed = build_quantized_module(
            model, data, n_bits=3, calibration=calibration, batch_size=batch
        )
        # per-channel scales are arrays: compare their text
        assert repr(module_state(whole)) == repr(module_state(streamed))
        np.testing.assert_array_equal(whole.forward(X_MLP[:50]), streamed.forward(X_MLP[:50]))
        assert _weights(whole) == _weights(streamed)
    minmax = build_quantized_module(model, X_MLP, n_bits=3)
    assert repr(module_state(minmax)) != repr(module_state(whole))


@pytest.mark.parametrize("calibration", ["mse", "percentile", "entropy"])
def test_methods_on_a_cnn_with_batchnorm(calibration: str) -> None:
    model = cnn(seed=2, batchnorm=True)
    whole = build_quantized_module(model, X_CNN, n_bits=4, calibration=calibration)
    streamed = build_quantized_module(
        model, _irregular(X_CNN), n_bits=4, calibration=calibration, batch_size=32
    )
    assert_same_module(whole, streamed, X_CNN[:10])


def test_per_op_settings_touch_only_their_op() -> None:
    model = mlp([12, 16, 8, 3], seed=1)
    ref = build_quantized_module(model, X_MLP, n_bits=3)
    one = build_quantized_module(model, X_MLP, n_bits=3, calibration={"ops": {"act0": "mse"}})
    changed = [a != b for a, b in zip(module_state(ref), module_state(one), strict=True)]
    names = ["input", "input-stats", *ref.quant_layers_dict]
    # act0's own range changes; its producers keep theirs (its consumers see new inputs)
    assert next(n for n, c in zip(names, changed, strict=True) if c) == "a0"
    assert not any(changed[: names.index("a0")])
    weights = build_quantized_module(
        model, X_MLP, n_bits=3, calibration={"ops": {"gemm1": {"weights": "mse"}}}
    )
    assert module_state(weights)[:4] == module_state(ref)[:4]
    assert _weights(weights)[0] == _weights(ref)[0]
    assert _weights(weights)[1] != _weights(ref)[1]


def test_mse_closes_the_low_bit_gap_on_heavy_tailed_data() -> None:
    model = mlp([12, 32, 3], seed=4)
    x_test = RNG.standard_t(3, size=(400, 12)).astype(np.float32)
    exact = build_quantized_module(model, X_MLP, n_bits=12).forward(x_test)
    errors = {}
    for calibration in (None, "mse"):
        module = build_quantized_module(model, X_MLP, n_bits=3, calibration=calibration)
        errors[calibration] = float(np.mean((module.forward(x_test) - exact) ** 2))
    assert errors["mse"] < errors[None]


@pytest.mark.parametrize(
    ("calibration", "match"),
    [
        ("median", "unknown calibration method 'median'"),
        ({"method": "percentile", "percentile": 12}, r"\[90, 100\]"),
        ({"method": "mse", "bins": 3}, "bad parameters"),
        ({"weights": "entropy"}, "activations only"),
        ({"ops": {"gemm9": "mse", "nope": "mse"}}, r"no op named \['gemm9', 'nope'\]"),
        ({"ops": ["gemm0"]}, "must be a dict"),
        ({"activation": "mse"}, r"unknown key\(s\) \['activation'\]"),
        ({"ops": {"gemm0": {"weight": "mse"}}}, r"unknown key\(s\) \['weight'\]"),
        ({"per_channel": 1}, "must be a bool, 'symmetric' or 'asymmetric'"),
        ({"per_channel": "per-tensor"}, r"\['per_channel'\] must be a bool"),
        ({"ops": {"gemm0": {"per_channel": "asym"}}}, r"gemm0.\]\[.per_channel.\] must be"),
        (3, "expected a method name"),
    ],
)
def test_bad_calibration_is_a_typed_error(calibration: Any, match: str) -> None:
    with pytest.raises(CalibrationConfigError, match=match):
        build_quantized_module(mlp([12, 4], seed=0), X_MLP, n_bits=3, calibration=calibration)


def test_qat_import_refuses_methods() -> None:
    with pytest.raises(CalibrationConfigError, match="post-training"):
        build_quantized_module(
            mlp([12, 4], seed=0), X_MLP, n_bits=3, import_qat=True, calibration="mse"
        )


def test_resolved_plan() -> None:
    plan = resolve_calibration(
        {"activations": "entropy", "weights": "mse", "ops": {"a": "percentile"}}, ["a", "b"]
    )
    assert plan.for_op("b").activations == StatisticSpec("entropy")
    assert plan.for_op("b").weights == StatisticSpec("mse")
    assert plan.for_op("a").activations == StatisticSpec("percentile")
    assert plan.for_op("a").weights == StatisticSpec("percentile")
    assert resolve_calibration("entropy", []).default.weights is None
    assert resolve_calibration(None, []).is_minmax


class _Midrange(TensorStatistic):
    """A toy statistic (the range's middle half) registered by a test: one class + one call."""

    name: ClassVar[str] = "test-midrange"

    def __init__(self, n_total: int | None = None) -> None:
        super().__init__(n_total)
        self.lo: Any = None
        self.hi: Any = None

    def update(self, block: Any) -> None:
        arr = self._block(block)
        if arr.size:
            lo, hi = arr.min(), arr.max()
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)

    def merge(self, other: TensorStatistic) -> TensorStatistic:
        assert isinstance(other, _Midrange)
        self._merge_dtype(other)
        for block in [other.lo, other.hi] if other.lo is not None else []:
            self.update(np.asarray(block, dtype=other.dtype))
        return self

    def finalize(self, options: QuantizationOptions | None = None) -> np.ndarray:
        mid, half = (self.lo + self.hi) / 2, (self.hi - self.lo) / 4
        return self._ends(mid - half, mid + half)

    def dump_state(self) -> dict[str, Any]:
        if self.lo is None:
            return {"lo": None, "hi": None}
        return {"lo": float(self.lo), "hi": float(self.hi)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.lo, self.hi = state["lo"], state["hi"]


def test_a_registered_statistic_is_a_method() -> None:
    register_statistic(_Midrange)
    try:
        model = mlp([12, 8, 3], seed=1)
        module = build_quantized_module(
            model, X_MLP, n_bits=4, calibration={"ops": {"act0": "test-midrange"}}
        )
        ref = build_quantized_module(model, X_MLP, n_bits=4)
        raw = ref.quant_layers_dict["a0"][1].output_quant_stats
        got = module.quant_layers_dict["a0"][1].output_quant_stats
        assert got.rmax == pytest.approx(raw.rmin + 0.75 * (raw.rmax - raw.rmin), rel=1e-6)
        doc = json.loads(json.dumps(_Midrange().to_json()))
        assert doc["statistic"] == "test-midrange"
    finally:
        del STATISTICS["test-midrange"]


def test_per_channel_weights_have_one_scale_per_output_channel() -> None:
    model = mlp([12, 16, 3], seed=1)
    module = build_quantized_module(model, X_MLP, n_bits=3, calibration={"per_channel": True})
    w = module.quant_layers_dict["g0"][1].constant_inputs[1]
    raw = np.asarray(w.values, dtype=np.float64)
    scale = np.asarray(w.quantizer.scale)
    assert scale.shape == (16, 1)
    np.testing.assert_allclose(scale[:, 0], np.abs(raw).max(axis=1) / 3)
    assert np.abs(np.asarray(w.qvalues)).max(axis=1).tolist() == [3] * 16


def test_bias_correction_moves_the_output_mean_towards_float() -> None:
    model = mlp([12, 3], seed=1)  # one Gemm: its output mean is the model's
    exact = build_quantized_module(model, X_MLP, n_bits=12).forward(X_MLP)
    shift = {}
    for flag in (False, True):
        module = build_quantized_module(
            model, X_MLP, n_bits=2, calibration={"bias_correction": flag}
        )
        shift[flag] = float(np.abs((module.forward(X_MLP) - exact).mean(axis=0)).sum())
    assert shift[True] < shift[False]


@pytest.mark.parametrize("mode", [True, "asymmetric"])
def test_per_channel_modules_round_trip_through_json(mode: Any) -> None:
    calibration = {"per_channel": mode, "weights": "mse", "bias_correction": True}
    for model, x in ((mlp([12, 8, 3], seed=1), X_MLP), (cnn(seed=1), X_CNN)):
        module = build_quantized_module(model, x, n_bits=3, calibration=calibration)
        back = loads(module.dumps())
        np.testing.assert_array_equal(back.forward(x[:40]), module.forward(x[:40]))
        q = module.quantize_input(x[:40])
        np.testing.assert_array_equal(back.quantized_forward(q), module.quantized_forward(q))


def test_per_channel_modes_resolve() -> None:
    plan = resolve_calibration(
        {"per_channel": True, "ops": {"a": {"per_channel": "asymmetric"}}}, ["a", "b"]
    )
    assert plan.for_op("b").per_channel == "symmetric"
    assert plan.for_op("a").per_channel == "asymmetric"
    assert resolve_calibration({"per_channel": False}, []).is_minmax


@pytest.mark.parametrize("weights", [None, "mse"])
def test_asymmetric_per_channel_weights(weights: Any) -> None:
    """One scale and one integer zero point per output channel; each channel's integers
    span the unsigned range (min/max) and dequantize within half a step."""
    model = mlp([12, 16, 3], seed=1)
    calibration = {"per_channel": "asymmetric", "weights": weights}
    module = build_quantized_module(model, X_MLP, n_bits=3, calibration=calibration)
    w = module.quant_layers_dict["g0"][1].constant_inputs[1]
    raw = np.asarray(w.values, dtype=np.float64)
    scale, zp = np.asarray(w.quantizer.scale), np.asarray(w.quantizer.zero_point)
    assert scale.shape == zp.shape == (16, 1)
    assert zp.dtype == np.int64 and zp.min() >= 0 and zp.max() <= 7
    q = np.asarray(w.qvalues)
    assert q.min() >= 0 and q.max() <= 7
    if weights is None:  # min/max: every channel uses both ends of its range
        np.testing.assert_allclose(scale[:, 0], (raw.max(axis=1) - raw.min(axis=1)) / 7)
        assert q.min(axis=1).tolist() == [0] * 16 and q.max(axis=1).tolist() == [7] * 16
        error = np.abs(w.quantizer.dequant(q) - raw)
        assert np.all(error <= scale / 2 * (1 + 1e-9))


def test_asymmetric_per_channel_gemm_is_exact() -> None:
    """A one-Gemm model: the output equals x_deq @ dequant(W)ᵀ + b in float64 (the
    per-channel zero points are subtracted exactly in the integer matmul), and is closer to
    the float model than per-tensor or symmetric per-channel weights at 2 bits."""
    model = mlp([12, 5], seed=3)
    exact = build_quantized_module(model, X_MLP, n_bits=12).forward(X_MLP)
    err = {}
    for mode in (False, True, "asymmetric"):
        module = build_quantized_module(model, X_MLP, n_bits=2, calibration={"per_channel": mode})
        err[mode] = float(np.abs(module.forward(X_MLP) - exact).mean())
    gemm = module.quant_layers_dict["y"][1]
    w, bias = gemm.constant_inputs[1], gemm.constant_inputs[2]
    q = module.quantize_input(X_MLP)
    x = module.input_quantizers[0].dequant(q)
    want = x @ np.asarray(w.quantizer.dequant(w.qvalues)).T + np.asarray(bias.values)
    got = module.dequantize_output(module.quantized_forward(q))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert err["asymmetric"] < err[False]
    assert err["asymmetric"] < err[True]


def test_asymmetric_per_channel_conv_streamed_equals_whole() -> None:
    calibration = {"per_channel": "asymmetric", "weights": "mse"}
    whole = build_quantized_module(cnn(seed=1), X_CNN, n_bits=3, calibration=calibration)
    streamed = build_quantized_module(
        cnn(seed=1), _irregular(X_CNN, (7, 50, 1, 62)), n_bits=3, calibration=calibration
    )
    assert whole.dumps() == streamed.dumps()
    np.testing.assert_array_equal(whole.forward(X_CNN[:40]), streamed.forward(X_CNN[:40]))
    conv = whole.quant_layers_dict["c1"][1].constant_inputs[1]
    assert np.shape(conv.quantizer.zero_point) == (4, 1, 1, 1)
