"""Property tests: random Conv / pool / Slice geometries against onnxruntime."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fhequant.onnx import NumpyModule
from onnx_testing import single_node

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


def _data(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    nsp = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 2]))
    cin = group * draw(st.integers(1, 2))
    cout = group * draw(st.integers(1, 2))
    k = [draw(st.integers(1, 3)) for _ in range(nsp)]
    d = [draw(st.integers(1, 2)) for _ in range(nsp)]
    s = [draw(st.integers(1, 3)) for _ in range(nsp)]
    pads = [draw(st.integers(0, 2)) for _ in range(2 * nsp)]
    size = [draw(st.integers((kk - 1) * dd + 1, 7)) for kk, dd in zip(k, d, strict=True)]
    return {
        "x": (2, cin, *size),
        "w": (cout, cin // group, *k),
        "attrs": {"group": group, "dilations": d, "strides": s, "pads": pads},
        "bias": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


@SETTINGS
@given(conv_cases())
def test_conv_geometry(case: dict) -> None:
    x = _data(case["seed"], *case["x"])
    inits = {"w": _data(case["seed"] + 1, *case["w"])}
    if case["bias"]:
        inits["b"] = _data(case["seed"] + 2, case["w"][0])
    model, ref = single_node("Conv", {"x": x}, inits, case["attrs"])
    np.testing.assert_allclose(NumpyModule(model)(x), ref[0], rtol=1e-5, atol=1e-6)


@st.composite
def pool_cases(draw: st.DrawFn) -> dict:
    op = draw(st.sampled_from(["AveragePool", "MaxPool"]))
    nsp = draw(st.sampled_from([1, 2]))
    k = [draw(st.integers(1, 3)) for _ in range(nsp)]
    s = [draw(st.integers(1, 3)) for _ in range(nsp)]
    pads = []
    for kk in k + k:
        pads.append(draw(st.integers(0, kk - 1)))  # onnxruntime requires pad < kernel
    size = [draw(st.integers(kk, 7)) for kk in k]
    attrs = {"kernel_shape": k, "strides": s, "pads": pads, "ceil_mode": draw(st.integers(0, 1))}
    if op == "AveragePool":
        attrs["count_include_pad"] = draw(st.integers(0, 1))
    return {"op": op, "x": (2, 2, *size), "attrs": attrs, "seed": draw(st.integers(0, 2**16))}


@SETTINGS
@given(pool_cases())
def test_pool_geometry(case: dict) -> None:
    x = _data(case["seed"], *case["x"])
    model, ref = single_node(case["op"], {"x": x}, None, case["attrs"])
    np.testing.assert_allclose(NumpyModule(model)(x), ref[0], rtol=1e-5, atol=1e-6)


@SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(-9, 9), st.integers(-9, 9), st.sampled_from([-3, -2, -1, 1, 2, 3])),
        min_size=1,
        max_size=3,
    ),
    st.permutations([0, 1, 2]),
)
def test_slice(spec: list[tuple[int, int, int]], perm: list[int]) -> None:
    x = _data(0, 4, 5, 6)
    axes = perm[: len(spec)]
    inits = {
        "s": np.array([a for a, _, _ in spec], np.int64),
        "e": np.array([b for _, b, _ in spec], np.int64),
        "a": np.array(axes, np.int64),
        "st": np.array([c for _, _, c in spec], np.int64),
    }
    model, ref = single_node("Slice", {"x": x}, inits)
    np.testing.assert_array_equal(NumpyModule(model)(x), ref[0])


@st.composite
def conv_transpose_cases(draw: st.DrawFn) -> dict:
    nsp = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 2]))
    cin = group * draw(st.integers(1, 2))
    og = draw(st.integers(1, 2))
    k = [draw(st.integers(1, 3)) for _ in range(nsp)]
    d = [draw(st.integers(1, 2)) for _ in range(nsp)]
    s = [draw(st.integers(1, 3)) for _ in range(nsp)]
    out_pad = [draw(st.integers(0, ss - 1)) for ss in s]  # onnxruntime: below the stride
    pads = [draw(st.integers(0, kk - 1)) for kk in k + k]
    size = [draw(st.integers(1, 4)) for _ in range(nsp)]
    for i in range(nsp):  # onnxruntime needs a non-empty output
        full = (size[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 + out_pad[i]
        assume(full - pads[i] - pads[nsp + i] >= 1)
    return {
        "x": (2, cin, *size),
        "w": (cin, og, *k),
        "attrs": {
            "group": group,
            "dilations": d,
            "strides": s,
            "pads": pads,
            "output_padding": out_pad,
        },
        "seed": draw(st.integers(0, 2**16)),
    }


@SETTINGS
@given(conv_transpose_cases())
def test_conv_transpose_geometry(case: dict) -> None:
    x = _data(case["seed"], *case["x"])
    inits = {"w": _data(case["seed"] + 1, *case["w"])}
    model, ref = single_node("ConvTranspose", {"x": x}, inits, case["attrs"])
    np.testing.assert_allclose(NumpyModule(model)(x), ref[0], rtol=1e-5, atol=1e-6)
