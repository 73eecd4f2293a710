"""The filter of the extremes kernels does its work: it is not silently bypassed.

A kernel that always fell back to the exact sums would give the same bits, so the tests of
test_extremes_filter.py would stay green; only the counters of
``_core.extremes_filter_counts`` (tasks bounded, tasks run exactly, whole exact passes) show
it. Each test resets them before measuring; pytest runs the tests of one process one at a
time, and nothing else calls these kernels meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from fhequant import _core

# the row chunk of the exact matmul kernel (ROWS_PER_TASK in rust/src/kernels/float/extremes.rs)
_ROWS_PER_TASK = 64


def _measure(call: Callable[[], Any]) -> tuple[int, int, int]:
    _core.extremes_filter_counts(reset=True)
    call()
    return _core.extremes_filter_counts()


def _mlp(dtype: str, rng: np.random.Generator) -> Callable[[], Any]:
    """An MLP-like layer, 4096 x 64 @ 64 x 128 plus bias, on random normal values."""
    a = rng.standard_normal((4096, 64))
    w = rng.standard_normal((64, 128)) * 0.125
    b = rng.standard_normal(128) * 0.1
    if dtype == "f32":
        a32, w32, b32 = a.astype(np.float32), w.astype(np.float32), b.astype(np.float32)
        return lambda: _core.matmul_extremes_f32(a32, w32, b32)
    if dtype == "dequantized":
        q = rng.integers(-128, 128, a.shape).astype(np.int8)
        return lambda: _core.matmul_extremes_f64(q, w, b, 0.021, -3.0)
    return lambda: _core.matmul_extremes_f64(a, w, b)


@pytest.mark.parametrize("dtype", ["f32", "f64", "dequantized"])
def test_typical_matmul_verifies_few_tasks_and_never_falls_back(dtype: str) -> None:
    tasks, verified, fallbacks = _measure(_mlp(dtype, np.random.default_rng(5)))
    assert fallbacks == 0
    assert tasks == 4096 // _ROWS_PER_TASK
    # the tasks holding the min and the max, and rarely a close neighbour
    assert 1 <= verified <= tasks // 8


def test_counts_add_up_across_calls_until_reset() -> None:
    call = _mlp("f64", np.random.default_rng(6))
    _core.extremes_filter_counts(reset=True)
    call()
    once = _core.extremes_filter_counts()
    call()
    twice = _core.extremes_filter_counts(reset=True)
    assert twice == tuple(2 * v for v in once)
    assert _core.extremes_filter_counts() == (0, 0, 0)


def test_typical_conv_verifies_few_tasks_and_never_falls_back() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 3, 16, 16))
    w = rng.standard_normal((8, 3, 3, 3)) * 0.3
    b = rng.standard_normal(8) * 0.1
    geometry = ((1, 1), (1, 1), (1, 1), (1, 1), 1)
    tasks, verified, fallbacks = _measure(lambda: _core.conv2d_extremes_f64(x, w, *geometry, b))
    assert fallbacks == 0
    assert tasks >= 16
    assert 1 <= verified <= tasks // 4


def test_exact_requests_bypass_the_filter() -> None:
    a, w = np.ones((300, 4)), np.ones((4, 3))
    assert _measure(lambda: _core.matmul_extremes_f64(a, w, exact=True)) == (0, 0, 0)


@pytest.mark.parametrize("case", ["nan", "inf_bias", "zero_min", "zero_max"])
def test_unclean_data_falls_back_to_the_exact_pass(case: str) -> None:
    rng = np.random.default_rng(8)
    a = rng.standard_normal((1000, 16))
    w = rng.standard_normal((16, 10))
    b: np.ndarray | None = None
    if case == "nan":
        a[500, 3] = np.nan
    elif case == "inf_bias":
        b = np.zeros(10)
        b[4] = np.inf
    else:  # non-negative values with one zero row: an extreme exactly 0
        a, w = np.abs(a) + 0.5, np.abs(w)
        a[123] = 0.0
        if case == "zero_max":
            w = -w
    got: list[tuple[float, float, bool]] = []
    counts = _measure(lambda: got.append(_core.matmul_extremes_f64(a, w, b)))
    assert counts[2] == 1
    assert got == [_core.matmul_extremes_f64(a, w, b, exact=True)]
    if case.startswith("zero"):
        assert 0.0 in got[0][:2]


def test_nan_conv_input_falls_back_to_the_exact_pass() -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 2, 8, 8))
    x[3, 1, 4, 4] = np.nan
    w = rng.standard_normal((4, 2, 3, 3))
    geometry = ((1, 1), (1, 1), (0, 0), (0, 0), 1)
    assert _measure(lambda: _core.conv2d_extremes_f64(x, w, *geometry))[2] == 1


def test_acc_filter_is_used_on_a_quantized_layer() -> None:
    """``int_matmul_acc_extremes`` on a 4096-row block of 6-bit activations and 128 x 128
    weights quantized to 6 bits: every row bounded by the integer estimate, a few run
    exactly, no whole exact pass (and the result is still the exact one)."""
    rng = np.random.default_rng(16)
    for k in (64, 128):
        a = np.clip(np.round(np.abs(rng.normal(0, 10, (4096, k)))), 0, 63).astype(np.int8)
        w = rng.standard_normal((k, 128)) / np.sqrt(k)
        b = rng.standard_normal(128) * 0.1
        step = float(w.max() - w.min()) / 63
        z_w = int(np.round(-w.min() / step)) - 32
        wq = np.clip(np.round(w / step) + z_w, -32, 31).astype(np.int64)
        _core.acc_extremes_filter_counts(reset=True)
        _, *got = _core.int_matmul_acc_extremes(a, wq, z_w, w, b, 0.05, 0.0, False)
        tasks, verified, fallbacks, refined = _core.acc_extremes_filter_counts()
        assert tuple(got) == _core.matmul_extremes_f64(a, w, b, 0.05, 0.0, exact=True)
        assert (tasks, fallbacks) == (4096, 0)
        assert 1 <= verified <= tasks // 64, (verified, tasks)
        assert refined <= 4096 * 128 // 100, refined
        # unrelated weight integers: still exact, but the filter rules nothing out
        wr = rng.integers(-32, 32, wq.shape)
        _core.acc_extremes_filter_counts(reset=True)
        _, *got = _core.int_matmul_acc_extremes(a, wr, 0, w, b, 0.05, 0.0, False)
        assert tuple(got) == _core.matmul_extremes_f64(a, w, b, 0.05, 0.0, exact=True)
        _, verified, fallbacks, _ = _core.acc_extremes_filter_counts()
        assert fallbacks == 1 or verified > tasks // 2
