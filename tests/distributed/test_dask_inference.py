"""Distributed batch inference equals local inference; faults lose and duplicate no rows."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

from fhequant import build_quantized_module
from fhequant.distributed import DaskData, ShippingReport, forward
from fhequant.errors import (
    ConfigurationError,
    DistributedError,
    GraphInputError,
    NotCompiledError,
)
from ptq_helpers import mlp

da = pytest.importorskip("dask.array")

RNG = np.random.default_rng(7)
X_TINY = RNG.normal(size=(40, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny() -> Any:
    return build_quantized_module(mlp([4, 3, 2], seed=0), X_TINY, n_bits=3)


def test_disable_on_uneven_dask_chunks_equals_local(client: Any, tiny: Any) -> None:
    x = RNG.normal(size=(1000, 4)).astype(np.float32)
    expected = tiny.forward(x)
    got = forward(tiny, da.from_array(x, chunks=((1, 300, 99, 600), 4)))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(forward(tiny, x, client=client, rows_per_block=77), expected)


def test_module_forward_takes_a_dask_array(client: Any, tiny: Any) -> None:
    """QuantizedModule.forward hands Dask inputs to the registered engine: the numpy result
    of the local forward, in row order, on the active client or the one of a DaskData."""
    x = RNG.normal(size=(1000, 4)).astype(np.float32)
    expected = tiny.forward(x)
    xd = da.from_array(x, chunks=((1, 300, 99, 600), 4))
    got = tiny.forward(xd)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(tiny(DaskData(xd, client=client), fhe="disable"), expected)
    np.testing.assert_array_equal(tiny.forward(x), expected)  # numpy stays local
    with pytest.raises(GraphInputError, match="debug=True"):
        tiny.forward(xd, debug=True)
    with pytest.raises(GraphInputError, match="not a valid mode"):
        tiny.forward(xd, fhe="fast")


def test_module_forward_names_a_failing_dask_block(client: Any, tiny: Any) -> None:
    x = RNG.normal(size=(100, 4)).astype(np.float32)
    x[65, 1] = np.nan
    with pytest.raises(DistributedError, match=r"row block 1 \(rows 50 to 99\)") as info:
        tiny.forward(da.from_array(x, chunks=(50, 4)))
    assert info.value.block == 1


def test_a_failing_block_is_named(client: Any, tiny: Any) -> None:
    x = RNG.normal(size=(100, 4)).astype(np.float32)
    x[65, 1] = np.nan  # rows 60..79 are block 3
    with pytest.raises(DistributedError, match=r"row block 3 \(rows 60 to 79\).*NaN") as info:
        forward(tiny, x, rows_per_block=20)
    assert info.value.block == 3


def test_modes_are_checked(client: Any, tiny: Any) -> None:
    with pytest.raises(ConfigurationError):
        forward(tiny, X_TINY, fhe="fast")
    with pytest.raises(NotCompiledError):
        forward(build_quantized_module(mlp([4, 2], seed=1), X_TINY), X_TINY, fhe="simulate")


def _slowly(block: np.ndarray) -> np.ndarray:
    time.sleep(0.25)
    return block


def test_killed_worker_loses_and_duplicates_no_rows(client: Any) -> None:
    cloudpickle = pytest.importorskip("cloudpickle")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # _slowly, on the workers
    model = build_quantized_module(mlp([16, 32, 8], seed=4), RNG.normal(size=(500, 16)))
    x = RNG.normal(size=(6_000, 16))
    expected = model.forward(x)
    # 30 lazily produced blocks of 200 rows, 0.25 s each: the kill lands mid-run
    xd = da.from_array(x, chunks=(200, 16)).map_blocks(_slowly)
    result: dict[str, Any] = {}

    def run() -> None:
        result["y"] = forward(model, xd, client=client)

    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not client.processing().get(victim):
        time.sleep(0.05)
    assert client.processing().get(victim), "no block started on the victim worker"
    os.kill(pids[victim], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()
    np.testing.assert_array_equal(result["y"], expected)
    assert os.getpid() not in pids.values()


@pytest.mark.slow
def test_simulate_and_execute_equal_local(client: Any) -> None:
    module = build_quantized_module(mlp([4, 3, 2], seed=0), X_TINY, n_bits=3)
    # simulate draws PBS errors with the circuit's p_error: keep it negligible so that the
    # distributed and local simulations (different random draws) agree on every row
    module.compile(X_TINY, p_error=1e-9)
    chunks = da.from_array(X_TINY, chunks=((7, 13, 20), 4))
    np.testing.assert_array_equal(
        forward(module, chunks, fhe="simulate"), module.forward(X_TINY, fhe="simulate")
    )
    # QuantizedModule.forward on a Dask array: the same rows as the local simulation
    np.testing.assert_array_equal(
        module.forward(chunks, fhe="simulate"), module.forward(X_TINY, fhe="simulate")
    )
    report = ShippingReport()
    got = forward(module, X_TINY[:6], fhe="execute", rows_per_block=2, report=report)
    local = module.forward(X_TINY[:6], fhe="execute")
    np.testing.assert_array_equal(got, local)
    assert report.bytes > 1_000_000 and report.workers == 2  # the evaluation keys
    rows = da.from_array(X_TINY[:6], chunks=((2, 4), 4))
    np.testing.assert_array_equal(module.forward(rows, fhe="execute"), local)
