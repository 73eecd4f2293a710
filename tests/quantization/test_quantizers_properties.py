"""Hypothesis properties of the quantizers (docs/contract.md §1) and the numpy 1.26 float32 rules
(§0)."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fhequant import (
    MinMaxQuantizationStats,
    QuantizationOptions,
    QuantizedArray,
    UniformQuantizationParameters,
    UniformQuantizer,
    serialization,
)

FINITE = {"allow_nan": False, "allow_infinity": False}


@st.composite
def float_data(draw: st.DrawFn, dtype: Any = np.float64) -> np.ndarray:
    """Data around a random center with a random width (so zero points vary widely)."""
    center = draw(st.floats(-1e4, 1e4, **FINITE))
    width = draw(st.floats(1e-3, 1e3, **FINITE))
    unit = draw(
        hnp.arrays(
            np.float64, st.integers(1, 40), elements=st.floats(-1.0, 1.0, **FINITE), unique=False
        )
    )
    return (center + width * unit).astype(dtype)


MODES = st.sampled_from(
    [
        {},
        {"is_signed": True},
        {"is_signed": True, "is_symmetric": True},
    ]
)


def _tolerance(x: np.ndarray, quantizer: UniformQuantizer) -> np.ndarray:
    scale = float(quantizer.scale)
    reach = np.abs(x) + scale * (abs(float(quantizer.zero_point)) + 2.0**quantizer.n_bits)
    return scale / 2 + 1e-12 * reach


@settings(max_examples=150, deadline=None)
@given(x=float_data(), n_bits=st.integers(2, 16), mode=MODES)
def test_round_trip_error_is_at_most_half_a_step(
    x: np.ndarray, n_bits: int, mode: dict[str, bool]
) -> None:
    assume(float(x.max()) - float(x.min()) >= 1e-6)
    q = QuantizedArray(n_bits, x, **mode)  # type: ignore[arg-type]
    error = np.abs(q.dequant() - x)
    assert (error <= _tolerance(x, q.quantizer)).all()


@st.composite
def options(draw: st.DrawFn) -> QuantizationOptions:
    signed = draw(st.booleans())
    symmetric = signed and draw(st.booleans())
    qat = not symmetric and draw(st.booleans())
    opts = QuantizationOptions(draw(st.integers(1, 20)), signed, symmetric, qat)
    opts.is_narrow = draw(st.booleans())
    opts.is_precomputed_qat = draw(st.booleans())
    return opts


@settings(max_examples=150, deadline=None)
@given(
    calib=float_data(),
    x=hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(-1e6, 1e6, **FINITE)),
    opts=options(),
    no_clipping=st.booleans(),
)
def test_qvalues_stay_inside_the_clip_bounds(
    calib: np.ndarray, x: np.ndarray, opts: QuantizationOptions, no_clipping: bool
) -> None:
    stats = MinMaxQuantizationStats()
    stats.compute_quantization_stats(calib)
    params = UniformQuantizationParameters()
    params.compute_quantization_parameters(opts, stats)
    quantizer = UniformQuantizer(opts, stats, params, no_clipping=no_clipping)
    with np.errstate(invalid="ignore", over="ignore"):
        q = quantizer.quant(x)
    if no_clipping:
        return
    lo = -quantizer.offset + (1 if opts.is_narrow else 0)
    hi = 2**opts.n_bits - 1 - quantizer.offset
    assert ((q >= lo) & (q <= hi)).all()
    assert quantizer.clip_bounds() == (lo, hi)


# --- float32 semantics, against a direct numpy computation of the docs/contract.md formulas -------


def _expected_float32(x: np.ndarray, n_bits: int, signed: bool, symmetric: bool) -> Any:
    """docs/contract.md §0/§1.3/§1.4 for float32 data, with every dtype written out explicitly."""
    rmin, rmax = x.min(), x.max()
    delta = np.subtract(rmax, rmin, dtype=np.float32)
    offset = 2 ** (n_bits - 1) if signed else 0
    if symmetric:
        largest = np.float64(max(abs(float(rmax)), abs(float(rmin))))
        scale = largest / np.float64(2**n_bits - 1 - offset)
        zero_point = 0
    else:
        scale = np.float64(delta) / np.float64(2**n_bits - 1)
        numerator = np.float64(-np.float64(rmax) * np.float64(offset)) - np.float64(
            np.float64(rmin) * np.float64(2**n_bits - 1 - offset)
        )
        zero_point = int(np.rint(numerator / np.float64(delta)))
    scaled = np.divide(x, np.float32(scale), dtype=np.float32)
    if -32768 <= zero_point <= 65535:
        shifted: np.ndarray = np.add(scaled, np.float32(zero_point), dtype=np.float32)
    else:
        shifted = scaled.astype(np.float64) + np.float64(zero_point)
    q = np.clip(np.rint(shifted), -offset, 2**n_bits - 1 - offset).astype(np.int64)
    return scale, zero_point, q


@settings(max_examples=200, deadline=None)
@given(x=float_data(np.float32), n_bits=st.integers(2, 16), mode=MODES)
def test_float32_data_keeps_float32_semantics(
    x: np.ndarray, n_bits: int, mode: dict[str, bool]
) -> None:
    delta = np.subtract(x.max(), x.min(), dtype=np.float32)
    assume(float(delta) >= 1e-6)
    q = QuantizedArray(n_bits, x, **mode)  # type: ignore[arg-type]
    scale, zero_point, qvalues = _expected_float32(
        x, n_bits, mode.get("is_signed", False), mode.get("is_symmetric", False)
    )
    assert type(q.quantizer.rmin) is np.float32 and type(q.quantizer.rmax) is np.float32
    assert type(q.quantizer.scale) is np.float64
    assert q.quantizer.scale.tobytes() == np.float64(scale).tobytes()
    assert int(q.quantizer.zero_point) == zero_point
    assert q.values.dtype == np.float32
    np.testing.assert_array_equal(q.qvalues, qvalues)


def test_float32_large_zero_point_adds_in_float64() -> None:
    # Far from 0 with 16 bits: the zero point is below -32768, so the add widens to float64.
    x = np.linspace(1000.0, 1001.0, 57, dtype=np.float32)
    q = QuantizedArray(16, x)
    assert q.quantizer.zero_point < -32768
    _, _, expected = _expected_float32(x, 16, False, False)
    np.testing.assert_array_equal(q.qvalues, expected)


@settings(max_examples=60, deadline=None)
@given(
    data=float_data(np.float32),
    cuts=st.lists(st.integers(1, 39), max_size=4),
)
def test_streamed_stats_equal_whole_set_stats(data: np.ndarray, cuts: list[int]) -> None:
    whole = MinMaxQuantizationStats()
    whole.compute_quantization_stats(data)
    streamed = MinMaxQuantizationStats()
    bounds = sorted({c for c in cuts if c < data.size})
    for batch in np.split(data, bounds):
        streamed.update_quantization_stats(batch)
    assert type(streamed.rmin) is type(whole.rmin) is np.float32
    # Bit-identical, except for the sign of a zero extreme: with both 0.0 and -0.0 in the
    # data, which one numpy's whole-array min/max returns depends on element positions and
    # SIMD lanes, so no batch-wise merge can reproduce it. The two zeros give the same
    # scale, zero point and integers; only the JSON text of rmin/rmax can differ.
    for got, want in ((streamed.rmin, whole.rmin), (streamed.rmax, whole.rmax)):
        if want == 0:
            assert got == 0
        else:
            assert got.tobytes() == want.tobytes()
    assert whole.uvalues is not None and streamed.uvalues is not None
    assert streamed.uvalues.dtype == whole.uvalues.dtype
    np.testing.assert_array_equal(streamed.uvalues, whole.uvalues)


# --- JSON round trips -----------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.floats(-1e3, 1e3, **FINITE),
    st.floats(-1e3, 1e3, **FINITE).map(np.float64),
    st.floats(-1e3, 1e3, width=32, **FINITE).map(np.float32),
)


def _round_trip(obj: Any) -> Any:
    text = obj.dumps()
    loaded = type(obj).loads(text)
    assert loaded.dumps() == text
    return loaded


@given(opts=options())
def test_options_round_trip(opts: QuantizationOptions) -> None:
    assert _round_trip(opts) == opts


@given(rmax=SCALARS, rmin=SCALARS)
def test_stats_round_trip(rmax: Any, rmin: Any) -> None:
    stats = MinMaxQuantizationStats(rmax, rmin)
    loaded = _round_trip(stats)
    assert loaded == stats
    assert type(loaded.rmax) is type(rmax) and type(loaded.rmin) is type(rmin)


@given(
    scale=SCALARS,
    zero_point=st.one_of(
        st.integers(-(2**40), 2**40),
        st.integers(-(2**40), 2**40).map(np.int64),
        hnp.arrays(np.float64, st.integers(1, 4), elements=st.floats(-9, 9, **FINITE)),
    ),
    offset=st.sampled_from([0, 1, 128, 2**15]),
)
def test_params_round_trip(scale: Any, zero_point: Any, offset: int) -> None:
    params = UniformQuantizationParameters(scale, zero_point, offset)
    loaded = _round_trip(params)
    assert loaded == params
    assert type(loaded.zero_point) is type(zero_point)


@settings(max_examples=60, deadline=None)
@given(x=float_data(), dtype=st.sampled_from([np.float32, np.float64]), opts=options())
def test_quantizer_and_array_round_trip(
    x: np.ndarray, dtype: type, opts: QuantizationOptions
) -> None:
    x = x.astype(dtype)
    q = QuantizedArray(opts.n_bits, x, options=opts)
    loaded = _round_trip(q)
    assert loaded == q
    assert loaded.values.dtype == q.values.dtype and loaded.qvalues.dtype == np.int64
    assert _round_trip(q.quantizer) == q.quantizer
    assert serialization.loads(serialization.dumps(q.quantizer)) == q.quantizer
