"""Integer products in the statistics pass of a Gemm/MatMul reading stored integers.

* ``fused_stats.INTEGER_FILTER`` (on by default): the exact integer product filters the float
  extremes instead of the float GEMM filter, and is dropped;
* ``passes.KEEP_PRODUCTS`` (off by default): a hidden Gemm/MatMul also keeps it for its output
  pass, within the memory budget.

The module must be the one computed with the float filter, and the kernels must really be
used where they apply."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from onnx import helper

from fhequant import _core, build_quantized_module
from fhequant.quantized import fused_stats
from fhequant.quantized.calibration import passes
from ptq_helpers import make_model, mlp

RNG = np.random.default_rng(77)
X = RNG.normal(size=(1500, 12)).astype(np.float32)
X3 = RNG.normal(size=(400, 3, 8)).astype(np.float32)


def _irregular(x: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(x), 170):
        yield x[start : start + 170]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the calls of the two product kernels (the real kernels run)."""
    seen: Counter[str] = Counter()

    def spy(name: str) -> Callable[..., Any]:
        kernel = getattr(_core, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            seen[name] += 1
            return kernel(*args, **kwargs)

        return counted

    for name in ("int_matmul_acc_extremes", "int_acc_rescale_quant"):
        monkeypatch.setattr(_core, name, spy(name))
    return seen


def assert_same_module(a: Any, b: Any, x: np.ndarray) -> None:
    """The same serialized module and the same outputs on ``x``."""
    assert a.dumps() == b.dumps()
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


def _both(
    monkeypatch: pytest.MonkeyPatch, model: Any, data: Callable[[], Any], **kwargs: Any
) -> tuple[Any, Any]:
    # only the kept products use the integer filter here: the counts are theirs
    monkeypatch.setattr(fused_stats, "INTEGER_FILTER", False)
    monkeypatch.setattr(passes, "KEEP_PRODUCTS", False)
    without = build_quantized_module(model, data(), **kwargs)
    monkeypatch.setattr(passes, "KEEP_PRODUCTS", True)
    with_products = build_quantized_module(model, data(), **kwargs)
    return without, with_products


@pytest.mark.parametrize(
    ("act", "n_bits", "batch_size", "calibration", "hidden"),
    [
        ("Relu", 6, None, None, 2),
        # at 4 bits the Gemms re-quantize the activations' 5-bit integers to 4 bits: they
        # do not read the stored integers, so nothing is kept
        ("Relu", 4, 64, None, 0),
        ("Relu", 8, 300, None, 2),
        ("Sigmoid", 5, 128, None, 2),
        ("Relu", 5, 256, {"per_channel": True}, 2),
        ("Relu", 5, 256, {"weights": "mse", "per_channel": "asymmetric"}, 2),
    ],
)
def test_kept_products_give_the_same_module(
    monkeypatch: pytest.MonkeyPatch,
    calls: Counter[str],
    act: str,
    n_bits: int,
    batch_size: int | None,
    calibration: Any,
    hidden: int,
) -> None:
    model = mlp([12, 40, 24, 16, 3], act=act, seed=n_bits)
    without, with_products = _both(
        monkeypatch,
        model,
        lambda: X,
        n_bits=n_bits,
        batch_size=batch_size,
        calibration=calibration,
    )
    assert_same_module(without, with_products, X[:60] * 1.3)
    # every block of the hidden Gemms that read stored integers (the first Gemm reads the
    # graph input, the last is the graph output)
    blocks = 1 if batch_size is None else -(-len(X) // batch_size)
    assert calls["int_matmul_acc_extremes"] == hidden * blocks
    assert calls["int_acc_rescale_quant"] == hidden * blocks


def test_streamed_products_within_the_budget(
    monkeypatch: pytest.MonkeyPatch, calls: Counter[str]
) -> None:
    model = mlp([12, 40, 24, 3], act="Relu", seed=5)
    # 100 rows x 24 int32 = 9600 bytes per product block of the second Gemm: 2 fit in 20000
    kwargs = {"n_bits": 6, "batch_size": 100, "memory_budget": 20_000}
    without, with_products = _both(monkeypatch, model, lambda: _irregular(X), **kwargs)
    assert_same_module(without, with_products, X[:50])
    # every block of the second Gemm is filtered by its product; two are kept
    assert calls["int_acc_rescale_quant"] == 2
    assert calls["int_matmul_acc_extremes"] == -(-len(X) // 100)


def test_no_budget_keeps_nothing(monkeypatch: pytest.MonkeyPatch, calls: Counter[str]) -> None:
    model = mlp([12, 40, 24, 3], act="Relu", seed=6)
    kwargs = {"n_bits": 6, "batch_size": 100, "memory_budget": 0}
    without, with_products = _both(monkeypatch, model, lambda: X, **kwargs)
    assert_same_module(without, with_products, X[:50])
    # the products filter the extremes but none is kept
    assert calls["int_acc_rescale_quant"] == 0
    assert calls["int_matmul_acc_extremes"] == len(X) // 100


def test_rounding_keeps_nothing(monkeypatch: pytest.MonkeyPatch, calls: Counter[str]) -> None:
    model = mlp([12, 40, 24, 3], act="Relu", seed=7)
    kwargs = {"n_bits": 6, "batch_size": 200, "rounding_threshold_bits": 5}
    without, with_products = _both(monkeypatch, model, lambda: X, **kwargs)
    assert_same_module(without, with_products, X[:50])
    assert not calls


def _matmul_model() -> Any:
    rng = np.random.default_rng(9)
    inits = {
        "w1": (rng.normal(size=(8, 12)) / 3).astype(np.float32),
        "w2": (rng.normal(size=(12, 5)) / 3).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
        helper.make_node("Relu", ["m1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"),
        helper.make_node("Relu", ["m2"], ["y"], name="relu2"),
    ]
    return make_model(nodes, [("x", [None, 3, 8])], [("y", [None, 3, 5])], inits)


def test_matmul_of_a_3d_input(monkeypatch: pytest.MonkeyPatch, calls: Counter[str]) -> None:
    without, with_products = _both(monkeypatch, _matmul_model(), lambda: X3, n_bits=5)
    assert_same_module(without, with_products, X3[:20])
    assert calls["int_acc_rescale_quant"] == 1


# --- the integer filter alone (the default) -------------------------------------------------


def _filtered(
    monkeypatch: pytest.MonkeyPatch,
    calls: Counter[str],
    model: Any,
    data: Callable[[], Any],
    **kwargs: Any,
) -> tuple[Any, Any]:
    """The module with the float filter, then with the default integer filter (counted; on
    every block: the filter's counters read zero, so no block hands the next ones over)."""
    assert fused_stats.INTEGER_FILTER and not passes.KEEP_PRODUCTS  # the defaults
    monkeypatch.setattr(_core, "acc_extremes_filter_counts", lambda reset=False: (0, 0, 0, 0))
    monkeypatch.setattr(fused_stats, "INTEGER_FILTER", False)
    float_filtered = build_quantized_module(model, data(), **kwargs)
    assert not calls
    monkeypatch.setattr(fused_stats, "INTEGER_FILTER", True)
    return float_filtered, build_quantized_module(model, data(), **kwargs)


@pytest.mark.parametrize(
    ("act", "n_bits", "batch_size", "calibration", "rounding"),
    [
        ("Relu", 6, None, None, None),
        ("Relu", 4, 64, None, None),
        ("Relu", 8, 300, None, None),
        ("Sigmoid", 5, 128, None, None),
        ("Relu", 5, 256, {"per_channel": True}, None),
        ("Relu", 5, 256, {"weights": "mse", "per_channel": "asymmetric"}, None),
        ("Relu", 6, 200, None, 5),
    ],
)
def test_integer_filter_gives_the_same_module(
    monkeypatch: pytest.MonkeyPatch,
    calls: Counter[str],
    act: str,
    n_bits: int,
    batch_size: int | None,
    calibration: Any,
    rounding: int | None,
) -> None:
    model = mlp([12, 40, 24, 16, 3], act=act, seed=n_bits + 10)
    float_filtered, integer_filtered = _filtered(
        monkeypatch,
        calls,
        model,
        lambda: X,
        n_bits=n_bits,
        batch_size=batch_size,
        calibration=calibration,
        rounding_threshold_bits=rounding,
    )
    assert_same_module(float_filtered, integer_filtered, X[:60] * 1.3)
    # every block of the three Gemms that read stored integers (the graph-output Gemm, a
    # Gemm that re-quantizes its input and one that calibrates rounding included: the
    # statistics read the producer's integers); nothing is kept
    blocks = 1 if batch_size is None else -(-len(X) // batch_size)
    assert calls["int_matmul_acc_extremes"] == 3 * blocks
    assert calls["int_acc_rescale_quant"] == 0


def test_integer_filter_streamed_and_3d(
    monkeypatch: pytest.MonkeyPatch, calls: Counter[str]
) -> None:
    model = mlp([12, 40, 24, 3], act="Relu", seed=21)
    kwargs = {"n_bits": 6, "batch_size": 100, "memory_budget": 20_000}
    a, b = _filtered(monkeypatch, calls, model, lambda: _irregular(X), **kwargs)
    assert_same_module(a, b, X[:50])
    assert calls["int_matmul_acc_extremes"] == 2 * -(-len(X) // 100)
    calls.clear()
    a, b = _filtered(monkeypatch, calls, _matmul_model(), lambda: X3, n_bits=5)
    assert_same_module(a, b, X3[:20])
    assert calls["int_matmul_acc_extremes"] == 1


def test_a_loose_estimate_hands_the_next_blocks_to_the_float_filter(
    monkeypatch: pytest.MonkeyPatch, calls: Counter[str]
) -> None:
    model = mlp([12, 40, 24, 3], act="Relu", seed=22)
    kwargs = {"n_bits": 6, "batch_size": 100}
    floats: Counter[int] = Counter()
    kernel = _core.matmul_extremes_f64

    def counted(*args: Any, **kw: Any) -> Any:
        floats[args[1].shape[-1]] += 1
        return kernel(*args, **kw)

    monkeypatch.setattr(_core, "matmul_extremes_f64", counted)
    monkeypatch.setattr(fused_stats, "INTEGER_FILTER", False)
    a = build_quantized_module(model, X, **kwargs)
    monkeypatch.setattr(fused_stats, "INTEGER_FILTER", True)
    # every block counts as loose: each Gemm's first block takes the integer filter, the
    # others the float one
    monkeypatch.setattr(fused_stats, "LOOSE_SURVIVORS", -1.0)
    b = build_quantized_module(model, X, **kwargs)
    assert_same_module(a, b, X[:50])
    blocks = -(-len(X) // 100)
    assert calls["int_matmul_acc_extremes"] == 2
    # (the float-filtered build ran every block of both Gemms in float64 first)
    assert floats == {24: 2 * blocks - 1, 3: 2 * blocks - 1}
