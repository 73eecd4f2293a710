"""Distributed calibration equals the local calibration of the same rows (module JSON)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fhequant import build_quantized_module
from fhequant.distributed import DaskData
from fhequant.distributed.merge import (
    Extremes,
    RoundingRange,
    TensorRanges,
    merge_extremes,
    merge_presence,
    merge_rounding_ranges,
    merge_tails,
    merge_tensor_ranges,
)
from fhequant.errors import DistributedError, GraphInputError, NonFiniteError
from fhequant.quantized.percentile import TailSelector, percentile_from_tails
from ptq_helpers import assert_same_module, cnn, mlp

da = pytest.importorskip("dask.array")

RNG = np.random.default_rng(2026)
X_MLP = RNG.normal(size=(1100, 12)).astype(np.float32)
X_CNN = RNG.normal(size=(300, 1, 8, 8)).astype(np.float32)


def _uneven(x: np.ndarray, rows: tuple[int, ...]) -> Any:
    assert sum(rows) == len(x)
    return da.from_array(x, chunks=(rows, *x.shape[1:]))


def _same(local: Any, dist: Any, x: np.ndarray) -> None:
    assert dist.dumps() == local.dumps()
    assert_same_module(local, dist, x)


def test_mlp_uneven_partitions_equal_local(client: Any) -> None:
    model = mlp([12, 24, 16, 5], act="Relu", seed=3)
    local = build_quantized_module(model, X_MLP, n_bits=4, batch_size=64)
    for rows in ((100, 37, 500, 463), (1100,), (1, 2, 1097)):
        dist = build_quantized_module(model, _uneven(X_MLP, rows), n_bits=4, batch_size=64)
        _same(local, dist, X_MLP[:50] * 1.5)


def test_mlp_sigmoid_table_path_and_explicit_client(client: Any) -> None:
    # the Sigmoid takes the integer-table path: its presence mask is merged over partitions
    model = mlp([12, 20, 3], act="Sigmoid", seed=5)
    local = build_quantized_module(model, X_MLP, n_bits=6, batch_size=100)
    data = DaskData(_uneven(X_MLP, (333, 700, 67)), client=client)
    _same(local, build_quantized_module(model, data, n_bits=6, batch_size=100), X_MLP[:40])


def test_cnn_batchnorm_percentiles_equal_local(client: Any) -> None:
    # BatchNorm clips to the 0.1/99.9 percentiles: its tails are merged over partitions
    model = cnn(seed=2, batchnorm=True)
    local = build_quantized_module(model, X_CNN, n_bits=5, batch_size=32)
    dist = build_quantized_module(model, _uneven(X_CNN, (10, 90, 7, 193)), n_bits=5, batch_size=32)
    _same(local, dist, X_CNN[:10])


def test_dataframe_of_feature_columns(client: Any) -> None:
    # the test extra pins a pyarrow that runs on numpy < 2 (recent releases need numpy 2)
    import dask.dataframe as dd
    import pandas as pd

    columns = [f"f{i}" for i in range(12)]
    frame = dd.from_pandas(pd.DataFrame(X_MLP, columns=columns), npartitions=3)
    model = mlp([12, 8, 3], seed=1)
    local = build_quantized_module(model, X_MLP, n_bits=5, batch_size=128)
    _same(local, build_quantized_module(model, frame, n_bits=5, batch_size=128), X_MLP[:20])


@pytest.mark.slow
@pytest.mark.parametrize("rounding", [4, {"n_bits": 5, "method": "APPROXIMATE"}])
def test_mlp_rounding_points_equal_local(client: Any, rounding: Any) -> None:
    model = mlp([12, 24, 16, 5], act="Relu", seed=3)
    kwargs = {"n_bits": 4, "rounding_threshold_bits": rounding, "batch_size": 64}
    local = build_quantized_module(model, X_MLP, **kwargs)
    dist = build_quantized_module(model, _uneven(X_MLP, (100, 37, 500, 463)), **kwargs)
    _same(local, dist, X_MLP[:50])
    assert dist.quant_layers_dict["g0"][1].lsbs_to_remove["matmul"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("batchnorm", [False, True])
def test_cnn_rounding_equal_local(client: Any, batchnorm: bool) -> None:
    model = cnn(seed=2, batchnorm=batchnorm)
    kwargs = {"n_bits": 5, "rounding_threshold_bits": 5, "batch_size": 32}
    local = build_quantized_module(model, X_CNN, **kwargs)
    dist = build_quantized_module(model, _uneven(X_CNN, (10, 90, 200)), **kwargs)
    _same(local, dist, X_CNN[:10])


def test_nan_in_a_partition_is_a_typed_error(client: Any) -> None:
    x = X_MLP.copy()
    x[700, 3] = np.nan
    with pytest.raises(NonFiniteError, match="'x'"):
        build_quantized_module(mlp([12, 4, 2]), _uneven(x, (600, 500)), batch_size=100)


def test_mismatched_inputs_are_rejected(client: Any) -> None:
    with pytest.raises(GraphInputError, match="rows"):
        build_quantized_module(mlp([12, 4, 2]), (_uneven(X_MLP, (1100,)), da.zeros((5, 12))))


def test_merges_are_the_local_folds() -> None:
    a, b = Extremes(np.float32(-1), np.float32(2), np.float32), Extremes()
    assert merge_extremes(a, b) is a and merge_extremes(b, a).lo == a.lo
    c = merge_extremes(a, Extremes(np.float32(-3), np.float32(1), np.float32))
    assert (c.lo, c.hi) == (-3, 2)
    mask = merge_presence(np.array([True, False, False]), np.array([False, False, True]))
    assert mask is not None and mask.tolist() == [True, False, True]
    r = merge_rounding_ranges(RoundingRange("m", -4, 9), RoundingRange("m", -9, 3))
    assert (r.lo, r.hi) == (-9, 9)
    with pytest.raises(DistributedError):
        merge_rounding_ranges(RoundingRange("m", 0, 1), RoundingRange("n", 0, 1))
    t = merge_tensor_ranges(TensorRanges(1.0, 2.0, 3, 4), TensorRanges(None, None, 1, 9))
    assert (t.vmin, t.vmax, t.qmin, t.qmax) == (1.0, 2.0, 1, 9)
    # tails of two streams give numpy's percentiles of the whole stream (small and large parts)
    values = RNG.normal(size=30_000)
    for cut in (5, 29_990, 12_345):
        left, right = TailSelector(values.size), TailSelector(values.size)
        left.update(values[:cut])
        right.update(values[cut:])
        merged = merge_tails(left, right)
        assert merged is not None
        for q in (0.1, 99.9):
            assert percentile_from_tails(merged, q) == np.percentile(values, q)


@pytest.mark.slow
def test_compile_onnx_model_takes_dask_data(client: Any) -> None:
    from fhequant import compile_onnx_model

    model = mlp([12, 6, 3], seed=2)
    x = X_MLP[:300]
    local = compile_onnx_model(model, x, n_bits=4)
    dist = compile_onnx_model(model, DaskData(_uneven(x, (100, 200)), client=client), n_bits=4)
    assert dist.dumps() == local.dumps()
    np.testing.assert_array_equal(
        dist.forward(x[:5], fhe="simulate"), local.forward(x[:5], fhe="simulate")
    )


def test_chained_table_ops_equal_local(client: Any) -> None:
    # locally, Relu and Sigmoid are views of g0 (their blocks are not stored), read by a Gemm
    # that re-quantizes them and by an Add that does not; the workers store them
    from onnx import helper

    from ptq_helpers import gemm_node, make_model

    rng = np.random.default_rng(8)
    inits = {
        "w0": (rng.normal(size=(8, 12)) / 3).astype(np.float32),
        "w1": (rng.normal(size=(8, 8)) / 3).astype(np.float32),
        "w2": (rng.normal(size=(3, 8)) / 3).astype(np.float32),
    }
    nodes = [
        gemm_node("x", "w0", None, "g0", "gemm0"),
        helper.make_node("Relu", ["g0"], ["r"], name="relu"),
        helper.make_node("Sigmoid", ["r"], ["s"], name="sig"),
        gemm_node("r", "w1", None, "t", "gemm1"),
        helper.make_node("Add", ["s", "t"], ["a"], name="add"),
        gemm_node("a", "w2", None, "y", "gemm2"),
    ]
    model = make_model(nodes, [("x", [None, 12])], [("y", [None, 3])], inits)
    local = build_quantized_module(model, X_MLP, n_bits=6, batch_size=128)
    dist = build_quantized_module(model, _uneven(X_MLP, (300, 800)), n_bits=6, batch_size=128)
    _same(local, dist, X_MLP[:40])
