"""The direct conv (issue 16): the fused Conv + rescale + output quantizer reading int8,
int16, int32 or int64 inputs, with the direct conv on and off, against the numpy twin.

Every case must give the same integers, min and max whatever the input dtype and path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import _core
from fhequant.kernels import requant as rk
from fhequant.kernels.reference import requant as spec

SETTINGS = settings(max_examples=60, deadline=None)
DTYPES = (np.int8, np.int16, np.int32, np.int64)


@st.composite
def conv_case(draw: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A Conv of random geometry (1 to 40 output channels, 1 input channel included,
    groups, depthwise, strides, pads) on inputs of 2 to 8 bits."""
    group = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.sampled_from([1, 1, 2, 3, 8]))
    og = draw(st.sampled_from([1, 3, 8, 16, 17, 40]))
    n = draw(st.integers(1, 6))
    ks = [draw(st.integers(1, 3)) for _ in range(2)]
    sizes = [draw(st.integers(k, k + 7)) for k in ks]
    strides = [draw(st.integers(1, 3)) for _ in ks]
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    bits = draw(st.integers(2, 8))
    signed = draw(st.booleans())
    x_lo, x_hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(x_lo, x_hi, size=(n, cg * group, *sizes), endpoint=True)
    w = rng.integers(-15, 15, size=(og * group, cg, *ks), endpoint=True)
    z_x = draw(st.integers(x_lo, x_hi))
    z_w = draw(st.integers(-5, 5))
    lsbs = draw(st.sampled_from([0, 0, 2]))
    o = og * group
    layout = (1, o, 1, 1)
    sub = rng.uniform(-50, 50, size=o).reshape(layout)
    mul = rng.uniform(1e-3, 0.5, size=o).reshape(layout)
    add = None if draw(st.booleans()) else rng.uniform(-2, 2, size=o).reshape(layout)
    out_bits = draw(st.sampled_from([4, 8, 12]))
    quant = (float(draw(st.floats(0.05, 4.0))), draw(st.integers(0, 3)), 0, 2**out_bits - 1)
    geometry = {"strides": strides, "pads": pads, "group": group}
    return (x, w, z_x, z_w, lsbs, draw(st.integers(-9, 9)), sub, mul, add, quant), geometry


def _same(got: Any, want: Any) -> None:
    assert (got is None) == (want is None)
    if got is None:
        return
    assert got[0].dtype == want[0].dtype
    np.testing.assert_array_equal(got[0], want[0])
    assert (got[1], got[2]) == (want[1], want[2])


@SETTINGS
@given(conv_case())
def test_narrow_inputs_and_both_paths_match_the_reference(case: Any) -> None:
    args, geometry = case
    want = spec.integer_conv_rescale_quant_reference(*args, **geometry)
    x = args[0]
    on = _core.int_direct_conv()
    try:
        for direct in (True, False):
            _core.int_direct_conv(direct)
            for dtype in DTYPES:
                narrow = x.astype(dtype)
                if not np.array_equal(narrow, x):
                    continue
                _same(rk.integer_conv_rescale_quant(narrow, *args[1:], **geometry), want)
    finally:
        _core.int_direct_conv(on)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernel_reads_a_narrow_input_unwidened(dtype: Any) -> None:
    """The native kernel takes the narrow array itself (no int64 copy on the way) and gives
    the integers of its int64 copy, also for a non-contiguous view."""
    rng = np.random.default_rng(3)
    x = rng.integers(-16, 15, size=(9, 8, 8, 2), endpoint=True).astype(dtype)
    view = x[..., 0].transpose(0, 2, 1)[:, None].repeat(2, axis=1)[:, :, ::2]
    w = rng.integers(-15, 15, size=(16, 2, 3, 3), endpoint=True)
    ones = np.ones(16)
    for q_x in (np.ascontiguousarray(view), view):
        run = [
            _core.int_conv2d_rescale_quant(
                a,
                w,
                1,
                1,
                (2, 2),
                (1, 1, 1, 1),
                -1,
                0,
                0.0,
                ones * 3,
                ones * 0.1,
                None,
                0.5,
                7.0,
                0.0,
                31.0,
                "int8",
            )
            for a in (q_x, q_x.astype(np.int64))
        ]
        np.testing.assert_array_equal(run[0][0], run[1][0])
        assert run[0][1:] == run[1][1:]


def test_unsupported_input_dtypes_are_refused() -> None:
    x = np.zeros((1, 1, 3, 3), dtype=np.uint8)
    w = np.zeros((1, 1, 1, 1), dtype=np.int64)
    v = np.ones(1)
    with pytest.raises(TypeError, match="int8, int16, int32 or int64"):
        _core.int_conv2d_rescale_quant(
            x, w, 0, 1, (1, 1), (0, 0, 0, 0), 0, 0, 0.0, v, v, None, 1.0, 0.0, 0.0, 5.0, "int8"
        )
    # the Python side widens what the kernel does not take
    got = rk.integer_conv_rescale_quant(x, w, 0, 0, 0, 0.0, v, v, None, (1.0, 0, 0, 5))
    assert got is not None and got[0].shape == (1, 1, 3, 3)
