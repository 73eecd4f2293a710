"""The executors' integer primitives agree on random data (Rust kernels vs concrete.fhe).

The tracing executor's primitives are concrete.fhe extensions (fhe.conv, fhe.maxpool,
fhe.round_bit_pattern, fhe.univariate, fhe.zeros); outside tracing they evaluate eagerly on
numpy arrays, which is what these properties compare against the clear executor.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant.errors import QuantizedOpError
from fhequant.quantization import QuantizedArray
from fhequant.quantized import CLEAR, TRACING, QuantizedGemm

geometry = st.tuples(
    st.integers(1, 2),  # batch
    st.integers(1, 3),  # channels
    st.integers(3, 7),  # H
    st.integers(3, 7),  # W
    st.integers(1, 3),  # kh
    st.integers(1, 3),  # kw
    st.integers(1, 2),  # sh
    st.integers(1, 2),  # sw
    st.lists(st.integers(0, 1), min_size=4, max_size=4),  # pads
    st.integers(-8, 7),  # pad value / zero point
    st.integers(0, 2**31 - 1),  # seed
)


@settings(max_examples=15, deadline=None)
@given(geometry, st.integers(1, 2), st.integers(-3, 3))
def test_conv_primitives_agree(g: tuple, group: int, z_w: int) -> None:
    n, c, h, w, kh, kw, sh, sw, pads, pad_value, seed = g
    rng = np.random.default_rng(seed)
    c_in = c * group
    x = rng.integers(-8, 8, (n, c_in, h, w))
    weights = rng.integers(-8, 8, (2 * group, c, kh, kw))
    kwargs = {"strides": (sh, sw), "pads": pads, "pad_value": pad_value, "group": group}
    clear = CLEAR.conv(x, weights, z_w=z_w, **kwargs)
    traced = TRACING.conv(x, weights, z_w=z_w, **kwargs)
    np.testing.assert_array_equal(clear, traced)


@settings(max_examples=15, deadline=None)
@given(geometry, st.integers(0, 1))
def test_pool_and_unfold_primitives_agree(g: tuple, ceil_mode: int) -> None:
    n, c, h, w, kh, kw, sh, sw, pads, pad_value, seed = g
    x = np.random.default_rng(seed).integers(-8, 8, (n, c, h, w))
    k, s = (kh, kw), (sh, sw)
    np.testing.assert_array_equal(
        CLEAR.window_sum(x, k, s, pads, pad_value, ceil_mode),
        TRACING.window_sum(x, k, s, pads, pad_value, ceil_mode),
    )
    np.testing.assert_array_equal(
        CLEAR.maxpool(x, k, s, pads, pad_value), TRACING.maxpool(x, k, s, pads, pad_value)
    )
    np.testing.assert_array_equal(
        CLEAR.unfold(x, k, s, pads, pad_value), TRACING.unfold(x, k, s, pads, pad_value)
    )
    np.testing.assert_array_equal(CLEAR.pad(x, pads, pad_value), TRACING.pad(x, pads, pad_value))


@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 5), st.integers(1, 6), st.integers(1, 4), st.integers(-9, 9), st.integers(0, 99)
)
def test_matmul_primitives_agree(m: int, k: int, n: int, z_w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))
    expected = a @ b - z_w * a.sum(axis=-1, keepdims=True)
    np.testing.assert_array_equal(CLEAR.matmul(a, b, z_w), expected)
    np.testing.assert_array_equal(TRACING.matmul(a, b, z_w), expected)
    np.testing.assert_array_equal(TRACING.tlu(a, np.abs), np.abs(a))
    np.testing.assert_array_equal(TRACING.copy(a), a)


def test_rounding_calibration_refuses_tracers() -> None:
    from fhequant.quantized.exec import fhe_module

    fhe = fhe_module()
    w = QuantizedArray(4, np.eye(3, dtype=np.float32))
    op = QuantizedGemm(5, "g", constant_inputs={1: w}, rounding_threshold_bits=2)
    x = np.arange(9, dtype=np.float32).reshape(3, 3)
    op.calibrate(x)
    q_x = op.input_quant_opts

    def f(v: np.ndarray) -> np.ndarray:
        qa = QuantizedArray(
            5, v, value_is_float=False, options=q_x, scale=0.1, zero_point=0, offset=16
        )
        return op.q_impl(qa, calibrate_rounding=True).qvalues

    with pytest.raises(QuantizedOpError, match=r"'g'.*while tracing"):
        fhe.Compiler(f, {"v": "encrypted"}).trace([np.arange(9).reshape(3, 3)])
