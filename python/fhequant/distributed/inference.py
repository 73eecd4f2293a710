"""Distributed batch inference: row blocks of a QuantizedModule's forward over Dask workers.

:func:`forward` is ``module.forward(x, fhe=...)`` with the rows cut into blocks, one task per
block, and the results concatenated in row order:

* ``"disable"`` / ``"simulate"``: each worker holds the module (and for ``"simulate"`` the
  compiled simulation server), installed once per worker by a worker plugin
  (:mod:`fhequant.distributed._worker`); a task runs ``module.forward`` on its block, so the
  result is the local one row for row;
* ``"execute"``: the compiled server and the *evaluation* keys are installed once per
  worker; the client quantizes and encrypts every row (the secret keys never leave it), the
  workers run ``fhe.Server.run`` on the serialized ciphertexts, the client decrypts and
  dequantizes, as ``module.forward(x, fhe="execute")`` does locally.

A worker that dies loses nothing: Dask re-runs its tasks (from the blocks' lineage) and
installs the plugin on the restarted worker. A block that fails raises a
:class:`~fhequant.errors.DistributedError` naming the block and its rows.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from typing import Any

import numpy as np

from fhequant.distributed._dask import DaskData, is_dask, require_dask, resolve_client
from fhequant.errors import ConfigurationError, DistributedError, GraphInputError, NotCompiledError

__all__ = ["DaskInferenceEngine", "ShippingReport", "forward", "install"]

_MODES = ("disable", "simulate", "execute")


class ShippingReport:
    """Bytes and seconds it took to install one run on the workers (``forward(..., report=)``)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.seconds = 0.0
        self.workers = 0


def _block_error(index: int, start: int, stop: int, exc: BaseException) -> DistributedError:
    return DistributedError(
        f"row block {index} (rows {start} to {stop - 1}) failed: {type(exc).__name__}: {exc}",
        block=index,
    )


def _forward_block(token: str, mode: str, index: int, start: int, *x: Any) -> Any:
    """``module.forward`` on one block (worker side)."""
    from fhequant.distributed._worker import loaded

    stop = start + (int(np.shape(x[0])[0]) if x else 0)
    try:
        module = loaded(token)["module"]
        return module.forward(*(np.asarray(a) for a in x), fhe=mode)
    except Exception as exc:
        raise _block_error(index, start, stop, exc) from exc


def _run_block(token: str, index: int, start: int, rows: list[list[bytes]]) -> list[list[bytes]]:
    """``Server.run`` on serialized encrypted rows (worker side)."""
    from concrete import fhe

    from fhequant.distributed._worker import loaded

    try:
        entry = loaded(token)
        server, keys = entry["server"], entry["keys"]
        results = []
        for row in rows:
            args = [fhe.Value.deserialize(b) for b in row]
            out = server.run(*args, evaluation_keys=keys)
            out = out if isinstance(out, tuple) else (out,)
            results.append([v.serialize() for v in out])
        return results
    except Exception as exc:
        raise _block_error(index, start, start + len(rows), exc) from exc


def _save_server(server: Any) -> bytes:
    with tempfile.TemporaryDirectory(prefix="fhequant-server-") as tmp:
        path = os.path.join(tmp, "server.zip")
        server.save(path)
        with open(path, "rb") as file:
            return file.read()


def _artifacts(module: Any, mode: str) -> Any:
    from fhequant.distributed._worker import Artifacts

    art = Artifacts(module.dumps(), mode)
    if mode == "disable":
        return art
    circuit = getattr(module, "fhe_circuit", None)
    if circuit is None:
        raise NotCompiledError(
            f"forward(fhe={mode!r}) needs a compiled FHE circuit; call compile() first or use "
            "fhe='disable'"
        )
    if mode == "simulate":
        if int(getattr(circuit, "packing_key_switch_count", 0) or 0) != 0:
            raise ConfigurationError(
                "distributed fhe='simulate' of a CRT circuit (packing key switches) is not "
                "supported: concrete cannot simulate it from a server; simulate locally"
            )
        art.server_zip = _save_server(circuit.simulator)
        return art
    from fhequant.fhe.run import ensure_keys

    ensure_keys(circuit)
    art.server_zip = _save_server(circuit.server)
    art.evaluation_keys = circuit.client.evaluation_keys.serialize()
    return art


def _row_blocks(x: tuple[Any, ...], rows_per_block: int | None, n_workers: int) -> Any:
    """(start, stop, parts) per block: Dask arrays keep their row chunks."""
    if all(is_dask(a) for a in x):
        from fhequant.distributed._dask import aligned_arrays

        arrays = aligned_arrays(x, 1)
        chunks = [a.to_delayed().ravel() for a in arrays]
        bounds = np.cumsum([0, *arrays[0].chunks[0]])
        return [
            (int(bounds[i]), int(bounds[i + 1]), tuple(c[i] for c in chunks))
            for i in range(len(chunks[0]))
        ]
    arrays = tuple(np.asarray(a) for a in x)
    total = arrays[0].shape[0] if arrays and arrays[0].ndim else 0
    if total == 0:
        raise GraphInputError("forward: give at least one row")
    per = rows_per_block or max(1, -(-total // (4 * max(n_workers, 1))))
    return [
        (start, min(total, start + per), tuple(a[start : start + per] for a in arrays))
        for start in range(0, total, per)
    ]


def _concat(results: list[Any]) -> Any:
    if isinstance(results[0], tuple):
        return tuple(np.concatenate([r[i] for r in results]) for i in range(len(results[0])))
    return np.concatenate(results)


def forward(
    module: Any,
    *x: Any,
    fhe: str = "disable",
    client: Any = None,
    rows_per_block: int | None = None,
    report: ShippingReport | None = None,
) -> Any:
    """``module.forward(*x, fhe=fhe)`` with row blocks mapped over Dask workers.

    Args:
        module: a QuantizedModule (compiled for "simulate" / "execute").
        *x: one array per input: numpy arrays or Dask arrays (whose row chunks are the blocks).
        fhe: "disable", "simulate" or "execute".
        client: a ``distributed.Client``; None: the active one.
        rows_per_block: rows per task for numpy inputs (default: 4 blocks per worker).
        report: filled with the bytes and seconds of installing the run on the workers.

    Returns:
        The outputs of every row, in order (a tuple if the module has several outputs).

    Raises:
        DistributedError: a block failed (``.block`` is its index).
    """
    if fhe not in _MODES:
        raise ConfigurationError(f"fhe={fhe!r} is not a valid mode; use one of {list(_MODES)}")
    if not x:
        raise GraphInputError("forward: give one array per model input")
    _, distributed = require_dask()
    client = resolve_client(client)
    n_workers = len(client.scheduler_info().get("workers", {})) or 1
    if fhe == "execute" and any(is_dask(a) for a in x):
        # the rows are encrypted with the secret keys, which stay on the client
        x = tuple(np.asarray(a.compute()) if is_dask(a) else a for a in x)
    blocks = _row_blocks(x, rows_per_block, n_workers)
    token, shipped = install(module, fhe, client)
    if report is not None:
        report.bytes, report.seconds, report.workers = shipped.bytes, shipped.seconds, n_workers
    try:
        if fhe == "execute":
            return _execute(module, client, token, blocks)
        import dask

        task = dask.delayed(_forward_block, pure=True)
        tasks = [task(token, fhe, i, start, *parts) for i, (start, _, parts) in enumerate(blocks)]
        return _concat(list(client.gather(client.compute(tasks))))
    finally:
        client.unregister_worker_plugin(token)
        del distributed


def install(module: Any, fhe: str, client: Any) -> tuple[str, ShippingReport]:
    """Install what ``fhe`` mode needs (module, server, evaluation keys) once per worker.

    Args:
        module: the QuantizedModule (compiled, with keys generated, for "execute").
        fhe: the mode.
        client: the ``distributed.Client``.

    Returns:
        The run's token (``client.unregister_worker_plugin(token)`` removes it) and the bytes
        and seconds of the installation.
    """
    from fhequant.distributed._worker import ModulePlugin

    started = time.perf_counter()
    artifacts = _artifacts(module, fhe)
    token = f"fhequant-{uuid.uuid4().hex}"
    client.register_plugin(ModulePlugin(token, artifacts), name=token)
    shipped = ShippingReport()
    shipped.bytes = artifacts.nbytes
    shipped.seconds = time.perf_counter() - started
    shipped.workers = len(client.scheduler_info().get("workers", {}))
    return token, shipped


def _execute(module: Any, client: Any, token: str, blocks: list[Any]) -> Any:
    """Encrypt on the client, run on the workers, decrypt on the client."""
    from fhequant.fhe.compile import split_samples
    from fhequant.fhe.run import concat_rows, result_tuple
    from fhequant.quantized.inputs import check_forward_inputs

    circuit = module.fhe_circuit
    futures = []
    for index, (start, _, parts) in enumerate(blocks):
        arrays = module.pre_processing(*parts)
        arrays = arrays if isinstance(arrays, tuple) else (arrays,)
        check_forward_inputs(
            arrays, module.ordered_module_input_names, module, module.input_quantizers
        )
        q_x = module.quantize_input(*arrays)
        q_x = q_x if isinstance(q_x, tuple) else (q_x,)
        rows = []
        for sample in split_samples([np.asarray(q, dtype=np.int64) for q in q_x]):
            args = sample if isinstance(sample, tuple) else (sample,)
            encrypted = circuit.encrypt(*args)
            encrypted = encrypted if isinstance(encrypted, tuple) else (encrypted,)
            rows.append([v.serialize() for v in encrypted])
        futures.append(client.submit(_run_block, token, index, start, rows, pure=False))
    from concrete import fhe

    q_rows: list[tuple[np.ndarray, ...]] = []
    for block in client.gather(futures):
        for row in block:
            values = [fhe.Value.deserialize(b) for b in row]
            q_rows.append(result_tuple(circuit.decrypt(*values)))
    q_y = concat_rows(q_rows)
    y = module.dequantize_output(*q_y)
    return module.post_processing(y)


class DaskInferenceEngine:
    """``QuantizedModule.forward(x, fhe=...)`` on Dask arrays: :func:`forward` on the active
    client (or the one of a :class:`~fhequant.distributed.DaskData` input). Registered when
    ``fhequant.distributed`` is imported; the result is the computed numpy output, in row
    order, as :func:`forward` returns it."""

    def claims(self, x: tuple[Any, ...]) -> bool:
        return any(isinstance(a, DaskData) or is_dask(a) for a in x)

    def forward(self, module: Any, *x: Any, fhe: Any) -> Any:
        arrays: list[Any] = []
        clients = []
        for a in x:
            if isinstance(a, DaskData):
                arrays.extend(a.data if isinstance(a.data, tuple) else (a.data,))
                clients.append(a.client)
            else:
                arrays.append(a)
        given = {id(c): c for c in clients if c is not None}
        if len(given) > 1:
            raise ConfigurationError(
                "forward: the DaskData inputs name different clients; give them one client"
            )
        mode = getattr(fhe, "value", fhe)
        return forward(module, *arrays, fhe=mode, client=next(iter(given.values()), None))
