"""Distributed benchmark (Dask LocalCluster on 127.0.0.1): calibration and batch simulation.

``python benches/distributed.py [--rows N] [--chunk-rows C] [--sim-rows M] [--skip-sim]``

The phases are logged on stderr with their elapsed time (a 10M-row calibration takes minutes).

Prints ONE JSON object:

* ``calibration``: the MLP 64-128-128-10 (digits-trained, 6 bits, rounding_threshold_bits=6)
  calibrated on a lazily generated ``N``-row Dask array (default 10M rows, 64 float32
  features, generated on the workers chunk by chunk) on 2 worker processes, with the peak
  RSS of each worker, against the same-run baseline: the local streamed calibration of the
  same rows (the chunks computed one at a time in this process), with its peak RSS and
  whether both modules are identical (JSON);
* ``simulate``: ``fhe="simulate"`` of ``M`` digits rows (default 2,000) with 1 and 2 worker
  processes (and in this process, the baseline), throughput ratio 2 / 1 workers;
* ``shipping``: bytes and seconds of installing the execution server and the evaluation keys
  on the 2 workers (once per worker), after a local keygen.

The machine is shared: the figures are single runs, read them with ``load_avg``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import warnings
from typing import Any

# this file is named like the ``distributed`` package: keep its folder off the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402

from fhequant import build_quantized_module  # noqa: E402
from fhequant.fhe.demo import load_digits_split, train_mlp  # noqa: E402
from fhequant.onnx import NumpyModule  # noqa: E402

FEATURES = 64
CHUNK_ROWS = 250_000
_START = time.perf_counter()


def _log(what: str) -> None:
    print(f"[{time.perf_counter() - _START:8.1f} s] {what}", file=sys.stderr, flush=True)


def _cluster(n_workers: int) -> Any:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        memory_limit=0,
    )
    return cluster, Client(cluster)


class _PeakRss:
    """Samples the RSS of this process or of each worker in a background thread."""

    def __init__(self, client: Any = None) -> None:
        self.client = client
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _rss() -> int:
        import psutil

        return int(psutil.Process().memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.client is not None:
                found = self.client.run(self._rss)
            else:
                found = {"local": self._rss()}
            for key, value in found.items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            self._stop.wait(0.2)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _digits_mlp() -> tuple[Any, np.ndarray, np.ndarray]:
    x_train, x_test, y_train, _ = load_digits_split()
    net = train_mlp(x_train, y_train, hidden=(128, 128))
    return net, x_train.astype(np.float32), x_test.astype(np.float32)


def _lazy_rows(rows: int, chunk_rows: int) -> Any:
    import dask.array as da

    rng = da.random.default_rng(2026)
    # digits pixels are in [0, 1]: uniform features keep the activations in the same range;
    # nothing is generated until a worker (or the local baseline) computes a chunk
    return rng.random((rows, FEATURES), chunks=(chunk_rows, FEATURES), dtype=np.float32)


def _local_chunks(x: Any) -> Any:
    for i in range(x.numblocks[0]):
        yield np.asarray(x.blocks[i].compute(scheduler="synchronous"))


def bench_calibration(rows: int, onnx_module: Any, chunk_rows: int) -> dict[str, Any]:
    kwargs = {"n_bits": 6, "rounding_threshold_bits": 6}
    x = _lazy_rows(rows, chunk_rows)
    cluster, client = _cluster(2)
    try:
        # imports (fhequant, and concrete for the rounding points) outside the timing
        client.run(lambda: __import__("concrete.fhe") and __import__("fhequant"))
        _log(f"distributed calibration of {rows} rows on 2 workers")
        with _PeakRss(client) as workers:
            start = time.perf_counter()
            dist = build_quantized_module(onnx_module, x, **kwargs)
            dist_s = time.perf_counter() - start
        _log(f"distributed: {dist_s:.1f} s; local streamed baseline of the same rows")
        with _PeakRss() as local:
            start = time.perf_counter()
            ref = build_quantized_module(onnx_module, _local_chunks(x), **kwargs)
            local_s = time.perf_counter() - start
        _log(f"local: {local_s:.1f} s")
    finally:
        client.close()
        cluster.close()
    return {
        "rows": rows,
        "chunk_rows": chunk_rows,
        "data_gb": rows * FEATURES * 4 / 1e9,
        "workers": 2,
        "distributed_s": dist_s,
        "distributed_rows_per_s": rows / dist_s,
        "peak_rss_mb_per_worker": sorted(v / 2**20 for v in workers.peak.values()),
        "baseline_local_streamed_s": local_s,
        "baseline_local_peak_rss_mb": local.peak.get("local", 0) / 2**20,
        "speedup": local_s / dist_s,
        "identical_module_json": dist.dumps() == ref.dumps(),
    }


def bench_simulate(module: Any, x: np.ndarray) -> dict[str, Any]:
    from fhequant.distributed import forward

    start = time.perf_counter()
    local = module.forward(x, fhe="simulate")
    local_s = time.perf_counter() - start
    out: dict[str, Any] = {"rows": len(x), "baseline_in_process_s": local_s}
    for n in (1, 2):
        cluster, client = _cluster(n)
        try:
            forward(module, x[:4], fhe="simulate")  # warm-up: imports and server load
            start = time.perf_counter()
            got = forward(module, x, fhe="simulate", rows_per_block=50)
            seconds = time.perf_counter() - start
        finally:
            client.close()
            cluster.close()
        out[f"workers_{n}_s"] = seconds
        out[f"workers_{n}_rows_per_s"] = len(x) / seconds
        out[f"workers_{n}_equal_local"] = bool(np.array_equal(got, local))
    out["throughput_2_over_1"] = out["workers_1_s"] / out["workers_2_s"]
    return out


def bench_shipping(module: Any) -> dict[str, Any]:
    from fhequant.distributed.inference import install

    start = time.perf_counter()
    module.fhe_circuit.keygen(force=False)
    keygen_s = time.perf_counter() - start
    cluster, client = _cluster(2)
    try:
        client.run(lambda: __import__("concrete.fhe"))
        token, shipped = install(module, "execute", client)
        client.unregister_worker_plugin(token)
    finally:
        client.close()
        cluster.close()
    return {
        "keygen_local_s": keygen_s,
        "shipped_mb": shipped.bytes / 2**20,
        "install_s_all_workers": shipped.seconds,
        "workers": shipped.workers,
        "evaluation_keys_mb": len(module.fhe_circuit.client.evaluation_keys.serialize()) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    parser.add_argument("--sim-rows", type=int, default=2_000)
    parser.add_argument("--skip-sim", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    net, x_train, x_test = _digits_mlp()
    onnx_module = NumpyModule.from_torch(net, x_train[:100])
    report: dict[str, Any] = {"load_avg_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    report["calibration"] = bench_calibration(args.rows, onnx_module, args.chunk_rows)
    if not args.skip_sim:
        module = build_quantized_module(net, x_train, n_bits=6, rounding_threshold_bits=6)
        module.compile(x_train)
        digits = np.concatenate([x_test, x_train])
        rows = np.resize(np.arange(len(digits)), args.sim_rows)
        report["simulate"] = bench_simulate(module, digits[rows])
        report["shipping"] = bench_shipping(module)
    report["load_avg_end"] = os.getloadavg()[0]
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
