"""Saving a compiled module and loading it back without recompiling.

``save_compiled_module(module, path_dir)`` writes the deployment artifacts (``client.zip``,
``server.zip``) and ``module.json`` (the module's versioned JSON, with the circuit's
fingerprint); ``load_compiled_module(path_dir)`` rebuilds the module and gives it a circuit
made of the loaded server artifact and a client, so ``forward(x, fhe="execute")`` runs at
once. Simulation needs the original circuit (concrete does not save its graph): compile again
for ``fhe="simulate"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fhequant.deployment.artifacts import (
    DEPLOYMENT_FORMAT_VERSION,
    check_document,
    dump_json,
    load_json,
    versions,
)
from fhequant.deployment.client import FHEModelClient
from fhequant.deployment.dev import FHEModelDev
from fhequant.deployment.server import FHEModelServer
from fhequant.errors import ArtifactError, NotCompiledError
from fhequant.quantized import QuantizedModule

__all__ = ["LoadedCircuit", "load_compiled_module", "save_compiled_module"]

MODULE_JSON = "module.json"
MODULE_DOC = "fhequant-compiled-module"


class LoadedCircuit:
    """A compiled circuit loaded from deployment artifacts: key generation, encryption,
    execution and decryption in one process (what ``fhe="execute"`` needs).

    Args:
        server: the loaded FHEModelServer.
        client: an FHEModelClient of the same model (holds the keys).
    """

    packing_key_switch_count = 0
    configuration = None

    def __init__(self, server: FHEModelServer, client: FHEModelClient) -> None:
        self._server, self._client = server, client
        cost = server.metadata.get("cost") or {}
        self.programmable_bootstrap_count = cost.get("programmable_bootstrap_count")
        self.cost = dict(cost)

    def keygen(self, force: bool = False, seed: int | None = None) -> None:
        """Generate the keys (kept by the client)."""
        self._client.client.keygen(force=force, secret_seed=seed)

    def encrypt(self, *args: Any) -> Any:
        """Encrypt one call's arguments."""
        return self._client.client.encrypt(*args)

    def run(self, *args: Any) -> Any:
        """Run the circuit on encrypted arguments."""
        return self._server.server.run(*args, evaluation_keys=self._client.client.evaluation_keys)

    def decrypt(self, *results: Any) -> Any:
        """Decrypt one call's results."""
        return self._client.client.decrypt(*results)

    def simulate(self, *_args: Any) -> Any:
        """Not available: concrete does not save the circuit's graph."""
        raise NotCompiledError(
            "a circuit loaded from deployment artifacts runs encrypted (fhe='execute') only; "
            "compile the module again to simulate it"
        )


def save_compiled_module(module: Any, path_dir: str | Path) -> None:
    """Save a compiled module: ``client.zip``, ``server.zip`` and ``module.json``.

    Args:
        module: a compiled QuantizedModule.
        path_dir: an empty (or new) directory.
    """
    path_dir = Path(path_dir)
    FHEModelDev(path_dir, module).save()
    doc = {
        "format": MODULE_DOC,
        "format_version": DEPLOYMENT_FORMAT_VERSION,
        "versions": versions(),
        "fingerprint": FHEModelClient(path_dir).metadata["fingerprint"],
        "module": json.loads(module.dumps()),
    }
    (path_dir / MODULE_JSON).write_bytes(dump_json(doc))


def load_compiled_module(path_dir: str | Path, key_dir: str | Path | None = None) -> Any:
    """Load a module saved by :func:`save_compiled_module`, ready for ``fhe="execute"``.

    Args:
        path_dir: the directory.
        key_dir: where the client keeps its keys (None: in memory).

    Returns:
        The QuantizedModule, its ``fhe_circuit`` a :class:`LoadedCircuit`.

    Raises:
        ArtifactError: missing or damaged files, or artifacts of another module.
        ArtifactVersionError: another format or concrete-python version.
    """
    path_dir = Path(path_dir)
    path = path_dir / MODULE_JSON
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; save_compiled_module writes it")
    doc = check_document(load_json(path.read_bytes(), str(path)), MODULE_DOC, str(path))
    client = FHEModelClient(path_dir, key_dir=key_dir)
    server = FHEModelServer(path_dir).load()
    if doc.get("fingerprint") != client.metadata.get("fingerprint"):
        raise ArtifactError(
            f"{path} belongs to another compiled circuit than {path_dir}/client.zip"
        )
    module = QuantizedModule.loads(json.dumps(doc["module"]))
    module.fhe_circuit = LoadedCircuit(server, client)
    module._is_compiled = True
    return module
