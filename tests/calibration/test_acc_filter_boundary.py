"""``_core.int_matmul_acc_extremes`` at the filter's boundary: its extremes are those of the
exact float64 kernel bit for bit, and its kept accumulators the exact integer product, on
inputs built to defeat a loose bound (tied extremes, all-equal rows, large K, negative scales,
non-finite weights or biases, int8/int16/int32 inputs)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import _core


def _check(
    a: np.ndarray,
    wq: np.ndarray,
    z_w: int,
    w: np.ndarray,
    b: np.ndarray | None,
    s: float,
    z: float,
) -> None:
    acc, lo, hi, finite = _core.int_matmul_acc_extremes(a, wq, z_w, w, b, s, z, True)
    want = _core.matmul_extremes_f64(a, w, b, s, z, exact=True)
    assert finite == want[2]
    if finite:
        assert (np.float64(lo).tobytes(), np.float64(hi).tobytes()) == (
            np.float64(want[0]).tobytes(),
            np.float64(want[1]).tobytes(),
        )
    assert acc is not None
    exact = a.astype(np.int64) @ (wq - z_w)
    np.testing.assert_array_equal(acc, exact)


def _layer(rng: np.random.Generator, k: int, m: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    w = rng.standard_normal((k, m)) / np.sqrt(k)
    half = 2 ** (bits - 1)
    step = float(np.abs(w).max()) / (half - 1)
    wq = np.clip(np.round(w / step), -half, half - 1).astype(np.int64)
    return w, wq


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    k=st.sampled_from([1, 3, 16, 17, 64, 130]),
    m=st.sampled_from([1, 5, 8, 13, 32]),
    dtype=st.sampled_from([np.int8, np.int16, np.int32]),
    s=st.sampled_from([0.05, -0.05, 1e-300, -3e10, 1.0]),
    z=st.sampled_from([0.0, 3.0, -7.0]),
    z_w=st.integers(-3, 3),
    with_bias=st.booleans(),
)
def test_random_layers(
    seed: int,
    n: int,
    k: int,
    m: int,
    dtype: type,
    s: float,
    z: float,
    z_w: int,
    with_bias: bool,
) -> None:
    rng = np.random.default_rng(seed)
    w, wq = _layer(rng, k, m, 6)
    a = rng.integers(0, 64, (n, k)).astype(dtype)
    b = rng.standard_normal(m) * 0.1 if with_bias else None
    _check(a, wq + z_w, z_w, w, b, s, z)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    copies=st.integers(2, 200),
    k=st.sampled_from([4, 64, 128]),
    s=st.sampled_from([0.05, -0.05]),
)
def test_tied_extremes_and_equal_rows(seed: int, copies: int, k: int, s: float) -> None:
    """The same row repeated (every row ties for both extremes), and a block where the
    extreme row appears many times among others."""
    rng = np.random.default_rng(seed)
    w, wq = _layer(rng, k, 16, 6)
    b = rng.standard_normal(16) * 0.1
    row = rng.integers(0, 64, (1, k)).astype(np.int8)
    _check(np.repeat(row, copies, axis=0), wq, 0, w, b, s, 0.0)
    others = rng.integers(0, 64, (copies, k)).astype(np.int8)
    mixed = np.concatenate([others, np.repeat(others[:1], copies, axis=0)])
    rng.shuffle(mixed)
    _check(mixed, wq, 0, w, b, s, 0.0)
    # equal columns too: every value of a row is the same estimate
    wq1, w1 = np.repeat(wq[:, :1], 16, axis=1), np.repeat(w[:, :1], 16, axis=1)
    _check(mixed, wq1, 0, w1, None, s, 0.0)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([4096, 20000]))
def test_large_k(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    w, wq = _layer(rng, k, 4, 6)
    a = rng.integers(0, 64, (40, k)).astype(np.int8)
    _check(a, wq, 0, w, rng.standard_normal(4), 0.05, 0.0)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    bad=st.sampled_from([np.nan, np.inf, -np.inf, 1e300]),
    where=st.sampled_from(["weight", "bias"]),
)
def test_non_finite_weights_or_bias(seed: int, bad: float, where: str) -> None:
    rng = np.random.default_rng(seed)
    w, wq = _layer(rng, 16, 8, 6)
    b = rng.standard_normal(8) * 0.1
    if where == "weight":
        w[rng.integers(16), rng.integers(8)] = bad
    else:
        b[rng.integers(8)] = bad
    a = rng.integers(0, 64, (100, 16)).astype(np.int8)
    _check(a, wq, 0, w, b, 0.05, 0.0)


def test_extreme_values_of_the_input_type() -> None:
    """int8 inputs at -128/127 with a far zero point (the int8 norm's exact integer path at
    its limits), and int16 inputs at their limits."""
    rng = np.random.default_rng(5)
    w, wq = _layer(rng, 128, 8, 4)
    for z in (0.0, -128.0, 127.0, 3000.0, -30000.0):
        a = rng.choice(np.array([-128, 127, 0], dtype=np.int8), (200, 128))
        _check(a, wq, 0, w, None, 0.01, z)
    a16 = rng.choice(np.array([-32768, 32767, 1], dtype=np.int16), (50, 128))
    w4, wq4 = _layer(rng, 128, 8, 3)
    _check(a16, wq4, 0, w4, None, 1e-3, 0.0)
