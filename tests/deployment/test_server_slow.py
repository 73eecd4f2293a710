"""``fhequant serve`` with a model that has table lookups (bootstrap and key-switch keys):
encrypted results equal the clear integers, and evaluation keys of another model, which make
concrete abort the process that runs the circuit, give the client a 400 while the server
keeps serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from deployment_helpers import ROWS, ServerProcess, linear_module, mlp_module, save
from fhequant.deployment import FHEModelClient, RemoteClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("serve-mlp")
    module = mlp_module()
    assert module.fhe_circuit.programmable_bootstrap_count > 0
    server = ServerProcess(
        save(module, root / "model"), root / "keys", root / "server.log", "--workers", "1"
    ).start()
    yield module, server, root
    server.stop()


def test_mlp_over_http_and_foreign_keys(setup: Any, tmp_path: Path) -> None:
    module, server, _root = setup
    client = RemoteClient(server.url, key_dir=tmp_path)
    x = ROWS[:3]
    expected = module.quantized_forward(module.quantize_input(x))
    np.testing.assert_array_equal(client.predict(x, dequantize=False), expected)

    # keys of another model (no bootstrap key): concrete reads them, then aborts the worker
    other = FHEModelClient(save(linear_module(), tmp_path / "other"))
    reply = httpx.post(
        f"{server.url}/keys", content=other.get_serialized_evaluation_keys(), timeout=300
    )
    assert reply.status_code == 201, reply.text
    foreign_id = reply.json()["key_id"]
    ciphertexts = client.client.quantize_encrypt_serialize(x[:1])
    reply = httpx.post(f"{server.url}/predict/{foreign_id}", content=ciphertexts, timeout=300)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == "evaluation_keys_do_not_fit"
    # the keys were removed, the server serves on (with a new worker)
    reply = httpx.post(f"{server.url}/predict/{foreign_id}", content=ciphertexts, timeout=300)
    assert reply.status_code == 404
    assert httpx.get(f"{server.url}/health").status_code == 200
    np.testing.assert_array_equal(client.predict(x, dequantize=False), expected)
    client.close()
