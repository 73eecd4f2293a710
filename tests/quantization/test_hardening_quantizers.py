"""The quantizer domain of docs/contract.md §1.7 and the silently-wrong cases of issue 15."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhequant import QuantizationOptions, QuantizedArray, build_quantized_module, errors
from fhequant.onnx.ops.linear import gemm
from ptq_helpers import gemm_node, make_model

VALUES = np.array([0.0, 1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("n_bits", "error"),
    [
        (0, errors.QuantizationError),
        (-1, errors.QuantizationError),
        (33, errors.QuantizationError),
        (63, errors.QuantizationError),
        (64, errors.QuantizationError),
        (2.5, errors.ArgumentError),
        (True, errors.ArgumentError),
        ("8", errors.ArgumentError),
    ],
)
def test_n_bits_outside_the_domain_is_rejected(n_bits: object, error: type) -> None:
    with pytest.raises(error, match="n_bits"):
        QuantizedArray(n_bits, VALUES)  # type: ignore[arg-type]
    with pytest.raises(error, match="n_bits"):
        QuantizationOptions(n_bits)  # type: ignore[arg-type]


def test_widest_quantizer_gives_exact_integers() -> None:
    q = QuantizedArray(32, VALUES)
    assert q.qvalues.tolist() == [0, 1431655765, 2863311530, 4294967295]
    assert QuantizedArray(np.int64(8), VALUES).qvalues.tolist() == [0, 85, 170, 255]


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"scale": 0.0, "zero_point": 0, "offset": 0}, errors.QuantizationError, "scale"),
        ({"scale": -0.5, "zero_point": 0, "offset": 0}, errors.QuantizationError, "scale"),
        ({"scale": math.nan, "zero_point": 0, "offset": 0}, errors.NonFiniteError, "scale"),
        ({"scale": math.inf, "zero_point": 0, "offset": 0}, errors.NonFiniteError, "scale"),
        ({"scale": 0.1, "zero_point": math.nan, "offset": 0}, errors.NonFiniteError, "zero_point"),
        ({"scale": 0.1, "zero_point": 2**60, "offset": 0}, errors.QuantizationError, "zero_point"),
        ({"scale": 0.1, "zero_point": 0, "offset": -1}, errors.QuantizationError, "offset"),
        ({"scale": 0.1, "zero_point": 0, "offset": 0.5}, errors.ArgumentError, "offset"),
        ({"scale": "0.1", "zero_point": 0, "offset": 0}, errors.ArgumentError, "scale"),
        ({"rmin": 1.0, "rmax": 0.0}, errors.QuantizationError, "rmin"),
        ({"rmin": math.nan, "rmax": 1.0}, errors.NonFiniteError, "rmin"),
    ],
)
def test_explicit_parameters_outside_the_domain(kwargs: dict, error: type, field: str) -> None:
    with pytest.raises(error, match=field):
        QuantizedArray(8, VALUES, **kwargs)


def test_pinned_quirks_still_accepted() -> None:
    # a float zero point given as keyword (golden public-0108) and symmetric 1-bit (inf scale)
    q = QuantizedArray(
        3, np.array([1, 2]), value_is_float=False, is_signed=True, scale=0.5, zero_point=2.5,
        offset=4,
    )  # fmt: skip
    assert q.values.tolist() == [-0.75, -0.25]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sym = QuantizedArray(1, np.array([-1.0, 1.0]), is_signed=True, is_symmetric=True)
    assert sym.quantizer.scale == math.inf
    assert QuantizedArray(4, np.array([-0.5, -0.5])).quantizer.scale == -0.5


def test_range_that_overflows_float64_is_rejected() -> None:
    with pytest.raises(errors.QuantizationError, match="overflows"):
        QuantizedArray(8, np.array([-1e308, 1e308]))


def test_zero_point_beyond_int64_is_rejected() -> None:
    with pytest.raises(errors.QuantizationError, match="zero point"):
        QuantizedArray(8, np.array([1e300, 1e300 * (1 + 1e-14)]))


def test_float32_data_spanning_the_whole_range_has_a_finite_scale() -> None:
    values = np.array([-3.4e38, 0.0, 3.4e38], dtype=np.float32)
    q = QuantizedArray(8, values)
    assert np.isfinite(q.quantizer.scale) and q.quantizer.scale > 0
    assert q.qvalues.tolist() == [0, 128, 255]
    assert np.all(np.isfinite(q.quantizer.dequant(q.qvalues)))


def test_masked_and_longdouble_data_are_rejected() -> None:
    masked = np.ma.masked_array([0.0, 1.0, 100.0], mask=[0, 0, 1])
    with pytest.raises(errors.DTypeError, match="masked"):
        QuantizedArray(8, masked)
    if np.dtype(np.longdouble).itemsize > 8:
        with pytest.raises(errors.DTypeError, match="longdouble"):
            QuantizedArray(8, np.array([0.0, 1.0], dtype=np.longdouble))
    with pytest.raises(errors.DTypeError, match="float16"):
        QuantizedArray(19, np.array([0.0, 0.0078125], dtype=np.float16))


def test_gemm_integral_alpha_beyond_int64_stays_float() -> None:
    a = np.ones((2, 3), np.float32)
    b = np.ones((3, 2), np.float32)
    y = gemm(a, b, alpha=float(2**70), beta=float(2**70), c=np.ones(2, np.float32))
    assert y.dtype == np.float32
    assert gemm(a, b, alpha=2.0).dtype == np.float32


def _linear(bias: np.ndarray) -> object:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    return make_model(
        [gemm_node("x", "w", "b", "y", "fc")],
        [("x", [None, 4])],
        [("y", [None, 3])],
        {"w": w, "b": bias},
    )


def test_build_rejects_one_bit_ptq_weights() -> None:
    x = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    model = _linear(np.zeros(3, np.float32))
    with pytest.raises(errors.QuantizationError, match="op_weights"):
        build_quantized_module(model, x, n_bits=1)
    with pytest.raises(errors.QuantizationError, match="op_weights"):
        build_quantized_module(model, x, n_bits={"op_weights": 1, "op_inputs": 4})


def test_huge_bias_keeps_the_quantized_output_finite() -> None:
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    module = build_quantized_module(_linear(np.array([3e38, 0, 1], np.float32)), x, n_bits=8)
    out = module.forward(x)
    assert np.all(np.isfinite(out))
    assert np.allclose(out[:, 0], 3e38, rtol=1e-2)


_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
_N_BITS = st.one_of(
    st.integers(-3, 70), st.sampled_from([True, False, 2.5, "8", None]), st.just(np.int64(4))
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_bits=_N_BITS,
    data=st.lists(_FLOATS, min_size=0, max_size=6),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    signed=st.booleans(),
    symmetric=st.booleans(),
    explicit=st.one_of(
        st.none(), st.tuples(_FLOATS, st.one_of(st.integers(-(2**70), 2**70), _FLOATS))
    ),
)
def test_quantizer_fuzz_typed_error_or_consistent_result(
    n_bits: object, data: list, dtype: type, signed: bool, symmetric: bool, explicit: object
) -> None:
    """Typed error, or integers inside the clip range that dequantize to finite floats."""
    kwargs: dict = {"is_signed": signed, "is_symmetric": symmetric}
    if explicit is not None:
        scale, zp = explicit  # type: ignore[misc]
        kwargs.update(
            scale=scale,
            zero_point=zp,
            offset=2 ** (n_bits - 1)
            if signed and isinstance(n_bits, int) and 0 < n_bits < 40
            else 0,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values = np.array(data, dtype=dtype)
        try:
            q = QuantizedArray(n_bits, values, **kwargs)  # type: ignore[arg-type]
        except errors.FhequantError:
            return
    lo, hi = q.quantizer.clip_bounds()
    assert q.qvalues.dtype == np.int64
    assert np.all((q.qvalues >= lo) & (q.qvalues <= hi))
    scale = q.quantizer.scale
    if not (symmetric and n_bits == 1):  # the pinned infinite scale (docs/contract.md §1.3)
        assert np.isfinite(scale)
        assert np.all(np.isfinite(q.quantizer.dequant(q.qvalues)))
