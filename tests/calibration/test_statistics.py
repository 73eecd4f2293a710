"""Calibration statistics as a protocol (fhequant.quantization.tensor_stats): streamed ==
whole-set for any split, merge of partials == one pass, JSON round trip, exact values."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant.errors import QuantizationError, SerializationError
from fhequant.quantization import (
    QuantizationOptions,
    QuantizedArray,
    TensorStatistic,
    make_statistic,
    statistic_from_json,
)
from fhequant.quantization.tensor_stats import STATISTICS

METHODS: list[tuple[str, dict[str, Any]]] = [
    ("minmax", {}),
    ("percentile", {}),
    ("percentile", {"percentile": 97.5}),
    ("mse", {"grid": 40}),
    ("entropy", {"bins": 256, "candidates": 32}),
]
OPTIONS = [
    QuantizationOptions(3),
    QuantizationOptions(4, is_signed=True, is_symmetric=True),
    QuantizationOptions(6, is_signed=True),
]


def _data(seed: int, n: int, dtype: Any, heavy: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_t(2, size=n) if heavy else rng.normal(size=n)
    return x.astype(dtype)


def _state(stat: TensorStatistic) -> str:
    return json.dumps(stat.to_json(), sort_keys=True)


def _cuts(n: int, fractions: list[float]) -> list[int]:
    return sorted({int(f * n) for f in fractions} | {0, n})


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("name", "params"), METHODS)
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 3000),
    fractions=st.lists(st.floats(0, 1), max_size=6),
    dtype=st.sampled_from([np.float32, np.float64]),
    heavy=st.booleans(),
)
def test_streamed_and_merged_equal_one_pass(
    name: str,
    params: dict[str, Any],
    seed: int,
    n: int,
    fractions: list[float],
    dtype: Any,
    heavy: bool,
) -> None:
    x = _data(seed, n, dtype, heavy)
    one = make_statistic(name, n, **params)
    one.update(x)
    cuts = _cuts(n, fractions)
    streamed = make_statistic(name, n, **params)
    parts = []
    for lo, hi in itertools.pairwise(cuts):
        streamed.update(x[lo:hi])
        part = make_statistic(name, n, **params)
        part.update(x[lo:hi])
        # a partial statistic travels as JSON (another process or machine)
        parts.append(statistic_from_json(json.loads(json.dumps(part.to_json()))))
    merged = parts[-1]
    for part in reversed(parts[:-1]):
        merged = part.merge(merged)  # any order, any grouping
    assert _state(streamed) == _state(one) == _state(merged)
    for options in OPTIONS:
        _same(streamed.finalize(options), one.finalize(options))
        _same(merged.finalize(options), one.finalize(options))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_minmax_and_percentile_values(dtype: Any) -> None:
    x = _data(3, 5000, dtype, True).reshape(50, 100)
    minmax = make_statistic("minmax")
    minmax.update(x)
    _same(minmax.finalize(), np.array([x.min(), x.max()], dtype=dtype))
    for p in (90.0, 99.0, 99.9, 99.99, 100.0):
        stat = make_statistic("percentile", x.size, percentile=p)
        for block in np.array_split(x, 7):
            stat.update(block)
        expected = np.array([np.percentile(x, 100 - p), np.percentile(x, p)], dtype=dtype)
        _same(stat.finalize(), expected)


def _mse(x: np.ndarray, ends: np.ndarray, options: QuantizationOptions) -> float:
    q = QuantizedArray(int(options.n_bits), ends, options=options).quantizer
    return float(np.mean((q.dequant(q.quant(x)) - x) ** 2))


@pytest.mark.parametrize("options", OPTIONS)
def test_mse_beats_minmax_on_heavy_tails(options: QuantizationOptions) -> None:
    x = _data(5, 20_000, np.float32, True)
    mse = make_statistic("mse")
    mse.update(x)
    minmax = make_statistic("minmax")
    minmax.update(x)
    chosen = mse.finalize(options)
    assert chosen[0] >= x.min() and chosen[1] <= x.max()
    best = _mse(x, chosen, options)
    assert best < 0.8 * _mse(x, minmax.finalize(), options)
    # no shrink factor of a coarse check grid does better (up to the histogram's bin width)
    for a in np.geomspace(1.0, 1e-3, 37):
        ends = (a * minmax.finalize().astype(np.float64)).astype(np.float32)
        assert best <= 1.01 * _mse(x, ends, options)


def test_mse_keeps_a_non_negative_range_at_its_low_end() -> None:
    x = np.abs(_data(6, 5000, np.float32, True))
    stat = make_statistic("mse")
    stat.update(x)
    lo, hi = stat.finalize(QuantizationOptions(3))
    assert lo == x.min() and hi < x.max()


def test_entropy_clips_outliers_of_activations() -> None:
    x = np.maximum(_data(7, 50_000, np.float32, True), 0)
    stat = make_statistic("entropy")
    stat.update(x)
    lo, hi = stat.finalize(QuantizationOptions(5))
    assert lo == 0 and 0 < hi < x.max()
    assert not STATISTICS["entropy"].for_weights


def test_merge_refuses_other_streams() -> None:
    a = make_statistic("percentile", 100)
    with pytest.raises(QuantizationError, match="merge"):
        a.merge(make_statistic("percentile", 200))
    with pytest.raises(QuantizationError, match="merge"):
        a.merge(make_statistic("percentile", 100, percentile=99.0))
    with pytest.raises(QuantizationError, match="merge"):
        make_statistic("mse").merge(make_statistic("minmax"))
    f32, f64 = make_statistic("minmax"), make_statistic("minmax")
    f32.update(np.ones(3, np.float32))
    f64.update(np.ones(3, np.float64))
    with pytest.raises(QuantizationError, match="float64"):
        f32.merge(f64)


def test_bad_statistics_are_typed_errors() -> None:
    with pytest.raises(QuantizationError, match="unknown calibration statistic"):
        make_statistic("median")
    with pytest.raises(QuantizationError, match="n_total"):
        make_statistic("percentile")
    with pytest.raises(QuantizationError, match=r"\[90, 100\]"):
        make_statistic("percentile", 10, percentile=50)
    with pytest.raises(QuantizationError, match="bad parameters"):
        make_statistic("mse", bins=3)
    with pytest.raises(QuantizationError, match="no value"):
        make_statistic("minmax").finalize()
    with pytest.raises(QuantizationError, match="needs the quantizer options"):
        stat = make_statistic("mse")
        stat.update(np.ones(4))
        stat.finalize()
    with pytest.raises(SerializationError, match="not registered"):
        statistic_from_json({"statistic": "median", "params": {}, "n_total": 1})
    with pytest.raises(SerializationError, match="lacks"):
        statistic_from_json({"statistic": "minmax"})


def test_empty_statistics_round_trip() -> None:
    for name, params in METHODS:
        stat = make_statistic(name, 10, **params)
        back = statistic_from_json(json.loads(json.dumps(stat.to_json())))
        assert _state(back) == _state(stat)
        back.update(np.arange(10.0))
        stat.update(np.arange(10.0))
        assert _state(back) == _state(stat)


@pytest.mark.parametrize(("name", "params"), [m for m in METHODS if m[0] != "entropy"])
@pytest.mark.parametrize("options", OPTIONS)
@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(1, 9),
    width=st.sampled_from([1, 2, 5, 8, 33, 130]),
    heavy=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    constant_row=st.booleans(),
)
def test_row_ranges_equal_one_statistic_per_row(
    name: str,
    params: dict[str, Any],
    options: QuantizationOptions,
    seed: int,
    rows: int,
    width: int,
    heavy: bool,
    dtype: Any,
    constant_row: bool,
) -> None:
    """The vectorised search over all rows (per-channel weights) gives each row the range of
    its own statistic, bit for bit (rows of equal and of different bin counts, a constant
    row, both dtypes)."""
    data = _data(seed, rows * width, dtype, heavy).reshape(rows, width)
    if constant_row:
        data[0] = dtype(0.75)
    got = STATISTICS[name].row_ranges(data, options, **params)
    assert got.shape == (rows, 2)
    for row, ends in zip(data, got, strict=True):
        stat = make_statistic(name, row.size, **params)
        stat.update(row)
        _same(stat.finalize(options), ends)


def test_mse_row_search_is_independent_of_its_batch() -> None:
    """A row's range does not depend on the rows searched with it (the error sums have a
    fixed order)."""
    rng = np.random.default_rng(3)
    data = rng.standard_t(3, size=(5, 3000)).astype(np.float32)
    options = QuantizationOptions(3, is_signed=True, is_symmetric=True)
    whole = STATISTICS["mse"].row_ranges(data, options)
    for i in range(len(data)):
        _same(STATISTICS["mse"].row_ranges(data[i : i + 1], options)[0], whole[i])


@pytest.mark.parametrize("options", OPTIONS)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), width=st.sampled_from([1, 7, 64, 301]), heavy=st.booleans())
def test_pruned_mse_search_keeps_the_first_least_error(
    options: QuantizationOptions, seed: int, width: int, heavy: bool
) -> None:
    """The search stops summing candidates that already exceed the best error: each row's
    first least error (what the search keeps) is unchanged, bit for bit."""
    from fhequant.quantization import histogram_stats as hs

    rng = np.random.default_rng(seed)
    values = _data(seed, 4 * width, np.float64, heavy).reshape(4, width)
    weights = rng.integers(1, 5, size=values.shape).astype(np.float64)
    lo, hi = values.min(axis=1, keepdims=True), values.max(axis=1, keepdims=True)
    factors = hs._shrink_factors(30)
    centre = np.minimum(np.maximum(0.0, lo), hi)
    los, his = centre + factors * (lo - centre), centre + factors * (hi - centre)
    full = hs._rows_squared_errors(values, weights, los, his, options)
    pruned = hs._rows_squared_errors(values, weights, los, his, options, prune=True)
    best = np.argmin(full, axis=1)
    np.testing.assert_array_equal(np.argmin(pruned, axis=1), best)
    at = np.arange(len(best))
    np.testing.assert_array_equal(pruned[at, best], full[at, best])
    kept = np.isfinite(pruned)
    np.testing.assert_array_equal(pruned[kept], full[kept])
    dropped = ~kept & np.isfinite(full)
    assert np.all((full > full[at, best][:, None]) | ~dropped)
