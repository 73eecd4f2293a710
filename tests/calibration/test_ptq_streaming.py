"""Streamed calibration equals whole-set calibration exactly (docs/contract.md decision 4)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import build_quantized_module
from fhequant.errors import GraphInputError, NonFiniteError
from fhequant.kernels.float_matmul import sequential_matmul
from fhequant.kernels.reference.float_matmul import matmul_sequential_reference
from fhequant.quantized.calibration import traits
from fhequant.quantized.calibration.walk import _block_range
from fhequant.quantized.percentile import TailSelector, percentile_from_tails
from fhequant.quantized.streaming import (
    AUTO_BLOCK_ROWS_RANGE,
    AUTO_BLOCK_VALUES,
    DEFAULT_BLOCK_ROWS,
    TensorStore,
    auto_block_rows,
    iter_row_blocks,
    normalize_calibration_data,
)
from ptq_helpers import assert_same_module, cnn, mlp

RNG = np.random.default_rng(1234)
X_MLP = RNG.normal(size=(1100, 12)).astype(np.float32)
X_CNN = RNG.normal(size=(300, 1, 8, 8)).astype(np.float32)


def _irregular(x: np.ndarray, sizes: tuple[int, ...] = (1, 30, 7, 64, 200, 3)) -> Iterator[Any]:
    start, i = 0, 0
    while start < len(x):
        end = min(len(x), start + sizes[i % len(sizes)])
        yield x[start:end]
        start, i = end, i + 1


class _Reiterable:
    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __iter__(self) -> Iterator[Any]:
        return _irregular(self.x)


@pytest.mark.parametrize("rounding", [None, 4, {"n_bits": 5, "method": "APPROXIMATE"}])
def test_mlp_streamed_equals_whole(rounding: Any) -> None:
    model = mlp([12, 24, 16, 5], act="Relu", seed=3)
    kwargs = {"n_bits": 4, "rounding_threshold_bits": rounding}
    whole = build_quantized_module(model, X_MLP, batch_size=10_000, **kwargs)
    assert whole.quant_layers_dict["g0"][1].lsbs_to_remove.get("matmul", 0) == (
        0 if rounding is None else whole.quant_layers_dict["g0"][1].lsbs_to_remove["matmul"]
    )
    test = X_MLP[:50] * 1.5
    for data in (_irregular(X_MLP), _Reiterable(X_MLP), X_MLP):
        streamed = build_quantized_module(model, data, batch_size=64, **kwargs)
        assert_same_module(whole, streamed, test)
    if rounding is not None:
        assert whole.quant_layers_dict["g0"][1].lsbs_to_remove["matmul"] > 0


def test_mlp_sigmoid_spilled_to_disk_equals_whole() -> None:
    model = mlp([12, 20, 3], act="Sigmoid", seed=5)
    whole = build_quantized_module(model, X_MLP, n_bits=6, batch_size=4096)
    spilled = build_quantized_module(
        model, _irregular(X_MLP), n_bits=6, batch_size=100, memory_budget=0
    )
    assert_same_module(whole, spilled, X_MLP[:40])


@pytest.mark.parametrize("batchnorm", [False, True])
def test_cnn_streamed_equals_whole(batchnorm: bool) -> None:
    model = cnn(seed=2, batchnorm=batchnorm)
    whole = build_quantized_module(
        model, X_CNN, n_bits=5, rounding_threshold_bits=5, batch_size=4096
    )
    streamed = build_quantized_module(
        model, _irregular(X_CNN), n_bits=5, rounding_threshold_bits=5, batch_size=32
    )
    assert_same_module(whole, streamed, X_CNN[:10])
    assert whole.quant_layers_dict["c1"][1].lsbs_to_remove["matmul"] > 0


def test_rounding_range_is_global_not_a_max_over_blocks() -> None:
    # One block holds the largest accumulator, another the only negative one: the width of
    # the global range (sign bit on the large end) exceeds every per-block width.
    w = np.array([[1.0]], dtype=np.float32)
    model = mlp([1, 1, 1], seed=0)
    model.graph.initializer[0].CopyFrom(__import__("onnx").numpy_helper.from_array(w, "w0"))
    x = np.concatenate([np.linspace(0, 1, 64), np.linspace(-0.05, 0.01, 64)])
    x = x.astype(np.float32)[:, None]
    whole = build_quantized_module(model, x, n_bits=6, rounding_threshold_bits=3)
    streamed = build_quantized_module(model, x, n_bits=6, rounding_threshold_bits=3, batch_size=64)
    assert_same_module(whole, streamed, x)


def test_nan_in_calibration_data_names_the_input() -> None:
    x = X_MLP.copy()
    x[700, 3] = np.nan
    with pytest.raises(NonFiniteError, match="'x'"):
        build_quantized_module(mlp([12, 4]), _irregular(x), n_bits=4, batch_size=64)


def test_overflow_in_an_intermediate_names_tensor_and_op() -> None:
    model = mlp([12, 6, 2], seed=1, scale=1e30)
    x = (X_MLP * 1e20).astype(np.float32)
    for batch_size in (64, 4096):
        with pytest.raises(NonFiniteError, match=r"'g0'.*gemm0|gemm0.*'g0'"):
            build_quantized_module(model, x, n_bits=4, batch_size=batch_size)


def test_progress_bar_when_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    build_quantized_module(mlp([12, 3]), X_MLP, n_bits=4, batch_size=256, verbose=True)
    err = capsys.readouterr().err
    assert "calibration pass" in err
    assert "row/s" in err  # the rate of the pass
    assert "rows/s overall" in err  # the throughput of the calibration so far


def test_bad_calibration_data_is_rejected() -> None:
    with pytest.raises(GraphInputError, match="empty"):
        build_quantized_module(mlp([12, 3]), iter([]), n_bits=4)
    with pytest.raises(GraphInputError, match="batch_size"):
        build_quantized_module(mlp([12, 3]), X_MLP, n_bits=4, batch_size=0)
    with pytest.raises(GraphInputError, match="holds 2"):
        build_quantized_module(mlp([12, 3]), (X_MLP, X_MLP), n_bits=4)


def test_row_blocks_are_anchored_at_row_zero() -> None:
    x = np.arange(23, dtype=np.float32)[:, None]
    blocks = list(iter_row_blocks(normalize_calibration_data(_irregular(x)), 1, 5))
    assert [b[0].shape[0] for b in blocks] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), x)


def test_store_spills_and_restores_dtypes() -> None:
    with TensorStore(memory_budget=8) as store:
        store.put("q", np.array([1, 2, 300], dtype=np.int64))
        store.put("q", np.array([-1, 2], dtype=np.int64))
        store.put("f", np.ones(4, dtype=np.float32))
        assert store.spilled
        assert store.get("q", 0).dtype == np.int64
        np.testing.assert_array_equal(store.get("q", 1), [-1, 2])
        np.testing.assert_array_equal(store.get("f", 0), np.ones(4, dtype=np.float32))
        store.drop("q")
        assert "q" not in store


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 150),
    k=st.integers(1, 40),
    m=st.integers(1, 40),
    seed=st.integers(0, 2**31),
    split=st.integers(1, 150),
    dtypes=st.sampled_from(
        [(np.float32, np.float32), (np.float64, np.float32), (np.float64, np.float64)]
    ),
)
def test_sequential_matmul_kernel_matches_numpy_twin(
    n: int, k: int, m: int, seed: int, split: int, dtypes: tuple[Any, Any]
) -> None:
    rng = np.random.default_rng(seed)
    a = (rng.normal(size=(n, k)) * rng.choice([1e-3, 1.0, 1e3])).astype(dtypes[0])
    b = rng.normal(size=(k, m)).astype(dtypes[1])
    whole = sequential_matmul(a, b)
    assert whole.dtype == (a @ b).dtype
    np.testing.assert_array_equal(whole, matmul_sequential_reference(a, b))
    parts = [sequential_matmul(a[i : i + split], b) for i in range(0, n, split)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    np.testing.assert_array_equal(sequential_matmul(a[0], b), whole[0])


def test_batchnorm_streamed_clip_equals_the_ops_own_whole_tensor_calibration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = cnn(seed=4, batchnorm=True)
    streamed = build_quantized_module(model, _irregular(X_CNN), n_bits=5, batch_size=32)
    # Without the bounded-tail selection, BatchNorm is calibrated by its own calibrate() on
    # the concatenated inputs (np.percentile over the whole tensor).
    monkeypatch.setattr(traits, "clips_percentiles", lambda op: False)
    reference = build_quantized_module(model, X_CNN, n_bits=5, batch_size=32)
    bn = reference.quant_layers_dict["bn"][1]
    assert bn.output_quant_stats.rmax < np.float64(1e30)
    assert_same_module(reference, streamed, X_CNN[:10])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 4000),
    seed=st.integers(0, 2**31),
    double=st.booleans(),
    coarse=st.booleans(),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
)
def test_percentile_from_tails_is_numpys_percentile(
    n: int, seed: int, double: bool, coarse: bool, cuts: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n) * 10.0 ** rng.integers(-3, 6)
    if coarse:
        x = np.round(x, 1)
    x = x.astype(np.float64 if double else np.float32)
    selector = TailSelector(n)
    bounds = sorted({0, n, *(c % (n + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        selector.update(x[lo:hi])
    for percent in (0.1, 99.9):
        want = np.percentile(x, percent)
        got = percentile_from_tails(selector, percent)
        assert got == want
        assert np.asarray(got).dtype == np.asarray(want).dtype
        assert type(got) is type(want)


@pytest.mark.parametrize(
    ("shape", "w_shape", "attrs"),
    [
        ((300, 8, 8, 8), (16, 8, 3, 3), {"pads": (1, 1, 1, 1), "strides": (2, 2)}),
        ((300, 4, 7, 6), (6, 2, 2, 3), {"group": 2, "pads": (0, 1, 1, 0)}),
        ((300, 3, 9), (5, 3, 3), {"pads": (1, 1), "strides": (2,)}),
    ],
)
def test_float_conv_of_the_walk_is_split_independent(
    shape: tuple[int, ...], w_shape: tuple[int, ...], attrs: dict[str, Any]
) -> None:
    from fhequant.onnx import ONNX_OPS
    from fhequant.quantized.float_impls import conv_float

    rng = np.random.default_rng(11)
    x = rng.normal(size=shape)
    w = rng.normal(size=w_shape).astype(np.float32)
    b = rng.normal(size=w_shape[0]).astype(np.float32)
    whole = conv_float(x, w, b, **attrs)
    for rows in (1, 7, 64, 299):
        parts = [conv_float(x[i : i + rows], w, b, **attrs) for i in range(0, len(x), rows)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    # same numbers as the registry's (BLAS) Conv up to summation order
    spec = ONNX_OPS["Conv"]
    np.testing.assert_allclose(whole, spec.fn(x, w, b, **attrs), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 9),
    group=st.integers(1, 3),
    cg=st.integers(1, 3),
    og=st.integers(1, 5),
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilations=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    one_d=st.booleans(),
    x_f32=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_native_float_conv_is_the_im2col_sequential_matmul(
    n: int,
    group: int,
    cg: int,
    og: int,
    size: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int, int, int],
    one_d: bool,
    x_f32: bool,
    seed: int,
) -> None:
    from fhequant.quantized import float_impls

    rng = np.random.default_rng(seed)
    spatial = size[1:] if one_d else size
    k = kernel[1:] if one_d else kernel
    s = strides[1:] if one_d else strides
    d = dilations[1:] if one_d else dilations
    begins, ends = (pads[1:2], pads[3:4]) if one_d else (pads[:2], pads[2:])
    if any(
        (kk - 1) * dd + 1 > sz + lo + hi
        for sz, kk, dd, lo, hi in zip(spatial, k, d, begins, ends, strict=True)
    ):
        return
    scale = rng.choice([1e-3, 1.0, 1e3])
    x = (rng.normal(size=(n, group * cg, *spatial)) * scale).astype(
        np.float32 if x_f32 else np.float64
    )
    w = rng.normal(size=(group * og, cg, *k)).astype(np.float32)
    assert float_impls._native_conv_fits(x, w, d, begins, ends, group)
    native = float_impls._native_conv(x, w, s, d, begins, ends, group)
    twin = float_impls._im2col_conv(x, w, s, d, begins, ends, group)
    assert native.dtype == np.float64
    np.testing.assert_array_equal(native, twin)
    if n > 1:
        np.testing.assert_array_equal(
            float_impls._native_conv(x[1:2], w, s, d, begins, ends, group), native[1:2]
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("a_shape", "b_shape"), [((3, 0), (0, 4)), ((0, 5), (5, 4)), ((2, 3, 0), (0, 2))]
)
def test_sequential_matmul_of_empty_operands_is_numpys(
    dtype: Any, a_shape: tuple[int, ...], b_shape: tuple[int, ...]
) -> None:
    a, b = np.ones(a_shape, dtype), np.ones(b_shape, dtype)
    want = a @ b
    for got in (sequential_matmul(a, b), matmul_sequential_reference(a, b)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "y_shape"),
    [
        ((0, 1, 5, 5), (2, 1, 3, 3), (0, 2, 3, 3)),
        ((2, 0, 5, 5), (2, 0, 3, 3), (2, 2, 3, 3)),
        ((0, 1, 2, 5, 5), (2, 1, 1, 3, 3), (0, 2, 2, 3, 3)),  # 3-D: the numpy path
    ],
)
def test_float_conv_of_empty_operands(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], y_shape: tuple[int, ...]
) -> None:
    from fhequant.quantized.float_impls import conv_float

    y = conv_float(np.ones(x_shape, np.float32), np.ones(w_shape, np.float32))
    assert y.shape == y_shape and y.dtype == np.float64 and not y.any()


def test_auto_block_rows_follows_the_widest_tensor() -> None:
    # the MLP's widest tensor holds 24 values per row, the CNN's widest is a conv output:
    # blocks of 2^21 values of it, clipped to the range
    low, high = AUTO_BLOCK_ROWS_RANGE
    assert auto_block_rows(mlp([12, 24, 16, 5], act="Relu", seed=3)) == min(
        high, AUTO_BLOCK_VALUES // 24
    )
    widest = max(
        int(np.prod([d.dim_value for d in v.type.tensor_type.shape.dim[1:]]))
        for v in onnx.shape_inference.infer_shapes(cnn(seed=2)).graph.value_info
    )
    assert auto_block_rows(cnn(seed=2)) == max(low, min(high, AUTO_BLOCK_VALUES // widest))
    # a row so wide that the floor applies, and a model without known shapes
    wide = mlp([4, 16384, 2], act="Relu", seed=0)
    assert auto_block_rows(wide) == low
    # (a Gemm's output width is known from its weights even for an input of unknown shape)
    unknown = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        )
    )
    assert auto_block_rows(unknown) == DEFAULT_BLOCK_ROWS


def test_default_block_size_gives_the_module_of_any_other() -> None:
    model = mlp([12, 24, 16, 5], act="Relu", seed=3)
    chosen = build_quantized_module(model, X_MLP, n_bits=4)
    fixed = build_quantized_module(model, _irregular(X_MLP), n_bits=4, batch_size=64)
    assert_same_module(chosen, fixed, X_MLP[:50])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_block_range_is_numpys(dtype: Any) -> None:
    rng = np.random.default_rng(4)
    blocks = [
        rng.normal(size=(50, 3)),
        np.array([[0.0, -0.0], [-0.0, 0.0]]),
        np.array([[1.0, -np.inf], [2.0, 3.0]]),
        np.array([[1.0, np.nan], [2.0, 3.0]]),
        rng.normal(size=(6, 4))[:, ::2],  # not contiguous
    ]
    for block in blocks:
        block = block.astype(dtype)
        lo, hi = _block_range(block, "x")
        want = (block.min(), block.max())
        for got, w in zip((lo, hi), want, strict=True):
            assert type(got) is type(w)
            assert got.tobytes() == w.tobytes() or (np.isnan(got) and np.isnan(w))
