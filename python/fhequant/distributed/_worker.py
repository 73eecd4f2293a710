"""What the workers hold for distributed inference, installed once per worker.

:class:`ModulePlugin` is a Dask ``WorkerPlugin``: registered once by the client, it is set up
on every worker, including workers that join or are restarted later, and loads what the row
blocks of one run need into this process's :data:`_LOADED` registry, under the run's token:

* the module (its versioned JSON);
* ``fhe="simulate"``: concrete's *simulation* server (``fhe.Server.save`` zip), wrapped in a
  stand-in circuit whose ``simulate`` is ``Circuit.simulate``'s own encode / run / decode;
* ``fhe="execute"``: the *execution* server and the serialized ``fhe.EvaluationKeys``.
  Secret keys never reach a worker: the client encrypts and decrypts, the workers only run
  ``Server.run`` on serialized ``fhe.Value`` s.

This module imports ``distributed`` at top level; it is imported only when a distributed
inference runs. It will be reconciled with ``fhequant.deployment`` (FHEModelServer) when that
lands: the artifact is the same concrete server zip.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from fhequant import serialization
from fhequant.errors import DistributedError

__all__ = ["Artifacts", "ModulePlugin", "loaded"]

#: token -> what one run's row blocks need on this worker
_LOADED: dict[str, dict[str, Any]] = {}


@dataclass
class Artifacts:
    """What is shipped to every worker for one run (serialized; no secret keys)."""

    module_json: str
    mode: str
    server_zip: bytes | None = None
    evaluation_keys: bytes | None = None

    @property
    def nbytes(self) -> int:
        return (
            len(self.module_json) + len(self.server_zip or b"") + len(self.evaluation_keys or b"")
        )


def _load_server(data: bytes) -> Any:
    from concrete import fhe

    with tempfile.TemporaryDirectory(prefix="fhequant-server-") as tmp:
        path = os.path.join(tmp, "server.zip")
        with open(path, "wb") as file:
            file.write(data)
        return fhe.Server.load(path)


class SimulatedCircuit:
    """The part of a ``concrete.fhe.Circuit`` that ``fhequant.fhe.run.simulate`` uses, from a
    loaded simulation server: ``simulate`` is concrete's encode / run / decode of
    ``Circuit.simulate``. CRT circuits are refused by the client before shipping."""

    packing_key_switch_count = 0

    def __init__(self, server: Any) -> None:
        from concrete import fhe

        self.server = server
        self.client = fhe.Client(server.client_specs, is_simulated=True)

    def simulate(self, *args: Any) -> Any:
        encoded = self.client.simulate_encrypt(*args)
        return self.client.simulate_decrypt(self.server.run(encoded))


class ModulePlugin(WorkerPlugin):
    """Loads one run's artifacts on each worker (once; also on workers that join later).

    Args:
        token: the run's key in the workers' registry.
        artifacts: what to load.
    """

    def __init__(self, token: str, artifacts: Artifacts) -> None:
        self.token = token
        self.artifacts = artifacts

    def setup(self, worker: Any) -> None:
        from fhequant.quantized.module import QuantizedModule

        art = self.artifacts
        module = serialization.loads(art.module_json)
        if not isinstance(module, QuantizedModule):
            raise DistributedError("the shipped module is not a QuantizedModule")
        entry: dict[str, Any] = {"module": module}
        if art.server_zip is not None:
            server = _load_server(art.server_zip)
            entry["server"] = server
            if art.mode == "simulate":
                module.fhe_circuit = SimulatedCircuit(server)
        if art.evaluation_keys is not None:
            from concrete import fhe

            entry["keys"] = fhe.EvaluationKeys.deserialize(art.evaluation_keys)
        _LOADED[self.token] = entry

    def teardown(self, worker: Any) -> None:
        _LOADED.pop(self.token, None)


def loaded(token: str) -> dict[str, Any]:
    """What the plugin loaded for ``token`` on this worker."""
    entry = _LOADED.get(token)
    if entry is None:
        raise DistributedError(f"run {token!r} is not installed on this worker")
    return entry
