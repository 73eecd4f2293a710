"""The fused statistics pass of Gemm/MatMul/Conv calibration (fhequant.quantized.fused_stats).

The extremes kernels are checked against numpy on the materialised result (sequential matmul
or the walk's float conv, plus the bias, then min/max); the calibration hook is checked to be
taken and to give the same module as the materialised pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from fhequant import _core, build_quantized_module
from fhequant.errors import (
    DTypeError,
    EmptyTensorError,
    NonFiniteError,
    QuantizationError,
    ShapeError,
)
from fhequant.kernels.reference.float_matmul import matmul_sequential_reference
from fhequant.quantized import float_impls, fused_stats
from fhequant.quantized.calibration import early, passes
from ptq_helpers import cnn, make_model, mlp

_INTS = (np.int8, np.int16, np.int32)


@pytest.fixture(autouse=True)
def _statistics_pass_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the statistics pass: the ops reading a graph input run theirs
    too instead of being served while loading (test_early_statistics.py covers that)."""
    monkeypatch.setattr(early, "ENABLED", False)


def _check(arr: np.ndarray, got: tuple[float, float, bool]) -> None:
    """(min, max, finite) of a kernel against numpy on the materialised result."""
    lo, hi, finite = got
    if not np.isfinite(arr).all():
        assert not finite
        return
    assert finite
    want_lo, want_hi = arr.min(), arr.max()
    # equal non-zero floats have equal bits; a zero's sign is resolved by the caller
    assert lo == want_lo and hi == want_hi
    assert arr.dtype.type(lo) == lo and arr.dtype.type(hi) == hi  # representable exactly


def _poison(a: np.ndarray, what: str, rng: np.random.Generator) -> None:
    if what != "none" and a.size:
        a.reshape(-1)[rng.integers(a.size)] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[what]


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 20),
    m=st.integers(1, 20),
    dtypes=st.sampled_from(
        [
            ("f32", "f32", "f32"),
            ("f32", "f32", None),
            ("f64", "f32", "f32"),
            ("f32", "f64", None),
            ("f64", "f64", "f64"),
            ("i8", "f32", "f32"),
            ("i16", "f64", None),
            ("i32", "f32", "f64"),
        ]
    ),
    poison=st.sampled_from(["none", "none", "nan", "inf", "-inf"]),
    seed=st.integers(0, 2**31),
)
def test_matmul_extremes_are_numpys_on_the_materialised_result(
    n: int, k: int, m: int, dtypes: tuple[str, str, str | None], poison: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    names = {"f32": np.float32, "f64": np.float64, "i8": np.int8, "i16": np.int16}
    names["i32"] = np.int32
    a_t, w_t, b_t = (names[t] if t else None for t in dtypes)
    w = (rng.normal(size=(k, m)) * rng.choice([1e-3, 1.0, 1e3])).astype(w_t)
    bias = None if b_t is None else rng.normal(size=m).astype(b_t)
    if a_t in _INTS:
        info = np.iinfo(a_t)
        q = rng.integers(max(info.min, -300), min(info.max, 300), size=(n, k)).astype(a_t)
        scale, zp = float(rng.uniform(1e-3, 1.0)), float(rng.integers(-5, 5))
        a = _core.dequantize(q, scale, zp)
        target = bias
    else:
        q = None
        a = (rng.normal(size=(n, k)) * rng.choice([1e-3, 1.0, 1e3])).astype(a_t)
        target = a
    if target is not None:
        _poison(target, poison, rng)
    with np.errstate(all="ignore"):
        y = matmul_sequential_reference(a, w)
        arr = y if bias is None else y + bias
    f32 = arr.dtype == np.float32
    if f32:
        got = _core.matmul_extremes_f32(a, w, bias)
    else:
        w64, b64 = w.astype(np.float64), None if bias is None else bias.astype(np.float64)
        if q is None:
            got = _core.matmul_extremes_f64(a, w64, b64)
        else:
            got = _core.matmul_extremes_f64(q, w64, b64, scale, zp)
    _check(arr, got)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    group=st.integers(1, 3),
    cg=st.integers(1, 3),
    og=st.integers(1, 5),
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilations=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    x_type=st.sampled_from([np.float32, np.float64, *_INTS]),
    with_bias=st.booleans(),
    poison=st.sampled_from(["none", "none", "nan", "inf"]),
    seed=st.integers(0, 2**31),
)
def test_conv_extremes_are_numpys_on_the_materialised_result(
    n: int,
    group: int,
    cg: int,
    og: int,
    size: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int, int, int],
    x_type: Any,
    with_bias: bool,
    poison: str,
    seed: int,
) -> None:
    begins, ends = pads[:2], pads[2:]
    if any(
        (kk - 1) * dd + 1 > sz + lo + hi
        for sz, kk, dd, lo, hi in zip(size, kernel, dilations, begins, ends, strict=True)
    ):
        return
    rng = np.random.default_rng(seed)
    shape = (n, group * cg, *size)
    w = rng.normal(size=(group * og, cg, *kernel)).astype(np.float32)
    bias = rng.normal(size=group * og).astype(np.float32) if with_bias else None
    dequant: tuple[float, float] | None = None
    if x_type in _INTS:
        q = rng.integers(-100, 100, size=shape).astype(x_type)
        dequant = (float(rng.uniform(1e-3, 1.0)), float(rng.integers(-5, 5)))
        x = q
        x_float = _core.dequantize(q, *dequant)
        if bias is not None:
            _poison(bias, poison, rng)
    else:
        x = x_float = (rng.normal(size=shape) * rng.choice([1e-3, 1.0, 1e3])).astype(x_type)
        _poison(x, poison, rng)
    attrs = {"strides": strides, "dilations": dilations, "pads": pads, "group": group}
    with np.errstate(all="ignore"):
        arr = float_impls.conv_float(x_float, w, bias, **attrs)
    b64 = None if bias is None else bias.astype(np.float64)
    geometry = (strides, dilations, begins, ends, group, b64)
    w64 = w.astype(np.float64)
    if dequant is None:
        got = _core.conv2d_extremes_f64(x, w64, *geometry)
    else:
        got = _core.conv2d_extremes_f64(x, w64, *geometry, *dequant)
    assert arr.dtype == np.float64
    _check(arr, got)


def test_kernel_argument_errors_are_typed() -> None:
    a = np.zeros((3, 2), dtype=np.float64)
    w = np.zeros((2, 4))
    q = np.zeros((3, 2), dtype=np.int8)
    with pytest.raises(QuantizationError, match="scale and zero_point"):
        _core.matmul_extremes_f64(q, w)
    with pytest.raises(QuantizationError, match="only apply to integer"):
        _core.matmul_extremes_f64(a, w, None, 1.0, 0.0)
    with pytest.raises(DTypeError, match="int64"):
        _core.matmul_extremes_f64(np.zeros((3, 2), dtype=np.int64), w, None, 1.0, 0.0)
    with pytest.raises(ShapeError, match=r"fc: .*inner dimensions"):
        _core.matmul_extremes_f64(a, np.zeros((3, 4)), context="fc")
    with pytest.raises(ShapeError, match="bias has 3 values"):
        _core.matmul_extremes_f64(a, w, np.zeros(3))
    with pytest.raises(ShapeError, match="dimensions"):
        _core.matmul_extremes_f64(np.zeros((3, 2, 1)), w)
    with pytest.raises(ShapeError):
        _core.conv2d_extremes_f64(
            np.zeros((1, 3, 4, 4)), np.zeros((2, 2, 3, 3)), (1, 1), (1, 1), (0, 0), (0, 0), 1
        )
    with pytest.raises(EmptyTensorError):  # an empty result has no extremes
        _core.conv2d_extremes_f64(
            np.zeros((0, 2, 4, 4), dtype=np.int16),
            np.zeros((2, 2, 3, 3)),
            (1, 1),
            (1, 1),
            (0, 0),
            (0, 0),
            1,
            None,
            1.0,
            0.0,
        )


# --- the calibration hook --------------------------------------------------------------------


def _build(model: onnx.ModelProto, x: Any, fused: bool, **kwargs: Any) -> str:
    old = fused_stats.ENABLED
    fused_stats.ENABLED = fused
    try:
        return build_quantized_module(model, x, **kwargs).dumps()
    finally:
        fused_stats.ENABLED = old


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the ops whose statistics the hook computed."""
    taken: list[str] = []
    original = fused_stats.fused_statistics

    def spy(cal: Any, op: Any, variable: list[str], out: str, products: Any = None) -> Any:
        found = original(cal, op, variable, out, products)
        if found is not None:
            taken.append(op.op_instance_name)
        return found

    monkeypatch.setattr(passes, "fused_statistics", spy)
    return taken


def _batches(x: np.ndarray, sizes: tuple[int, ...] = (1, 30, 7, 64, 200, 3)) -> Iterator[Any]:
    start, i = 0, 0
    while start < len(x):
        yield x[start : start + sizes[i % len(sizes)]]
        start, i = start + sizes[i % len(sizes)], i + 1


RNG = np.random.default_rng(99)
X_MLP = RNG.normal(size=(700, 12)).astype(np.float32)
X_CNN = RNG.normal(size=(150, 1, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("batch_size", [4096, 64])
def test_mlp_and_cnn_take_the_hook_and_give_the_same_module(
    monkeypatch: pytest.MonkeyPatch, batch_size: int
) -> None:
    taken = _spy(monkeypatch)
    model = mlp([12, 24, 16, 5], act="Relu", seed=3)
    for rounding in (None, 4):
        kwargs = {"n_bits": 5, "rounding_threshold_bits": rounding, "batch_size": batch_size}
        want = _build(model, X_MLP, False, **kwargs)
        assert not taken
        assert _build(model, X_MLP, True, **kwargs) == want
        assert _build(model, _batches(X_MLP), True, **kwargs) == want
        assert taken == ["gemm0", "gemm1", "gemm2"] * 2
        taken.clear()
    model = cnn(seed=2)
    kwargs = {"n_bits": 5, "rounding_threshold_bits": 5, "batch_size": batch_size}
    assert _build(model, X_CNN, True, **kwargs) == _build(model, X_CNN, False, **kwargs)
    assert taken == ["conv1", "conv2"]


def test_batchnorm_keeps_the_materialised_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _spy(monkeypatch)
    model = cnn(seed=4, batchnorm=True)
    kwargs = {"n_bits": 5, "batch_size": 64}
    assert _build(model, X_CNN, True, **kwargs) == _build(model, X_CNN, False, **kwargs)
    assert taken == ["conv1", "conv2"]  # not the BatchNorm between them


def _single(
    op_type: str,
    w: np.ndarray,
    b: np.ndarray | None,
    x_shape: list[Any],
    relu: bool = True,
    **attrs: Any,
) -> onnx.ModelProto:
    """x -> Relu -> op(w, b) -> y: the op reads stored integers (the fused dequantization);
    without the Relu it reads the float graph input."""
    inits = {"w": w} if b is None else {"w": w, "b": b}
    src = "r" if relu else "x"
    ins = [src, "w"] if b is None else [src, "w", "b"]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu")] if relu else []
    nodes.append(helper.make_node(op_type, ins, ["y"], name="op", **attrs))
    return make_model(nodes, [("x", x_shape)], [("y", [None])], inits)


_R = np.random.default_rng(5)
_W = _R.normal(size=(6, 12)).astype(np.float32)
_B = _R.normal(size=6).astype(np.float32)


@pytest.mark.parametrize(
    ("model", "x", "fused"),
    [
        (_single("MatMul", _W.T.copy(), None, [None, 12]), X_MLP, True),
        (_single("Gemm", _W, _B, [None, 12], transB=1, beta=0.0), X_MLP, True),
        (_single("Gemm", _W.T.copy(), _B[None, :], [None, 12]), X_MLP, True),
        (_single("Gemm", _W.T.copy(), _B[:1], [None, 12]), X_MLP, True),
        (_single("Gemm", _W.T.astype(np.float64), _B, [None, 12]), X_MLP, True),
        (_single("Gemm", _W, _B, [None, 12], relu=False, transB=1), X_MLP, True),
        # float32 sums widened for a float64 bias: every block materialised by the hook
        (_single("Gemm", _W, _B.astype(np.float64), [None, 12], relu=False, transB=1), X_MLP, True),
        (
            _single(
                "Conv",
                _R.normal(size=(4, 2, 3)).astype(np.float32),
                _B[:4],
                [None, 4, 9],
                group=2,
                pads=[1, 0],
                strides=[2],
            ),
            _R.normal(size=(300, 4, 9)).astype(np.float32),
            True,
        ),
        (
            _single(
                "Conv",
                _R.normal(size=(6, 1, 2, 2)).astype(np.float32),
                None,
                [None, 1, 8, 8],
                strides=[2, 1],
                pads=[0, 1, 1, 0],
            ),
            X_CNN,
            True,
        ),
    ],
)
def test_layouts_fuse_or_fall_back_with_the_same_module(
    monkeypatch: pytest.MonkeyPatch, model: onnx.ModelProto, x: np.ndarray, fused: bool
) -> None:
    taken = _spy(monkeypatch)
    for batch_size in (4096, 50):
        kwargs = {"n_bits": 6, "batch_size": batch_size}
        assert _build(model, x, True, **kwargs) == _build(model, x, False, **kwargs)
    assert taken == (["op", "op"] if fused else [])


def test_layouts_the_kernels_do_not_take_have_no_plan() -> None:
    w = _W.T.copy()
    assert fused_stats._matmul_plan(w, np.ones((3, 6), np.float32), {}) is None
    assert fused_stats._matmul_plan(w, np.ones(6, np.int64), {}) is None
    assert fused_stats._matmul_plan(np.zeros((0, 6), np.float32), None, {}) is None
    assert fused_stats._conv_plan(np.ones((4, 2, 3, 3), np.float32), np.ones(3), {}) is None
    plan = fused_stats._matmul_plan(w, _B.astype(np.float64), {})
    assert plan is not None
    assert fused_stats._result_dtype(plan, X_MLP, None) is None  # float32 sums + float64 bias
    assert fused_stats._result_dtype(plan, X_MLP.astype(np.float64), None) == np.float64
    assert fused_stats._result_dtype(plan, X_MLP.astype(np.float16), None) is None
    plan = fused_stats._matmul_plan(w, _B, {})
    assert plan is not None and fused_stats._result_dtype(plan, X_MLP, None) == np.float32
    assert fused_stats._result_dtype(plan, np.zeros((2, 12), np.int8), (1.0, 0.0)) == np.float64


def test_float32_graph_input_gemm_is_fused_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _spy(monkeypatch)
    model = mlp([12, 3], seed=8)
    for x in (X_MLP, X_MLP.astype(np.float64)):
        assert _build(model, x, True, n_bits=6) == _build(model, x, False, n_bits=6)
    module = build_quantized_module(model, X_MLP, n_bits=6)
    assert np.asarray(module.quant_layers_dict["y"][1].output_quant_stats.rmax).dtype == np.float32
    assert taken == ["gemm0", "gemm0", "gemm0"]


def test_zero_extremes_are_resolved_by_the_materialised_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # non-negative inputs and weights, no bias: the minimum is a zero (rows of zeros)
    w = np.abs(_W.T).astype(np.float32)
    model = _single("MatMul", w, None, [None, 12])
    x = np.abs(X_MLP)
    x[::3] = 0.0
    calls: list[int] = []
    original = fused_stats._materialised

    def spy(*args: Any) -> Any:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(fused_stats, "_materialised", spy)
    taken = _spy(monkeypatch)
    for batch_size in (4096, 64):
        kwargs = {"n_bits": 6, "batch_size": batch_size}
        assert _build(model, x, True, **kwargs) == _build(model, x, False, **kwargs)
    assert taken == ["op", "op"] and len(calls) == 1 + -(-700 // 64)


def test_non_finite_results_raise_the_materialised_error() -> None:
    model = mlp([12, 6, 2], seed=1, scale=1e30)
    x = (X_MLP * 1e20).astype(np.float32)
    for batch_size in (64, 4096):
        messages = []
        for fused in (True, False):
            with pytest.raises(NonFiniteError, match=r"gemm0.*'g0'") as info:
                _build(model, x, fused, n_bits=4, batch_size=batch_size)
            messages.append(str(info.value))
        assert messages[0] == messages[1]
