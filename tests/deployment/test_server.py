"""``fhequant serve`` as a subprocess on 127.0.0.1 with a tiny linear model: encrypted
results, the bad-request matrix, concurrent clients, key eviction, restart, and what the
server writes (never a secret key)."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from deployment_helpers import ROWS, ServerProcess, linear_module, save
from fhequant import errors
from fhequant.__main__ import main as cli
from fhequant.deployment import FHEModelClient, RemoteClient, wire


@pytest.fixture(scope="module")
def module() -> Any:
    return linear_module()


@pytest.fixture(scope="module")
def server(module: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("serve")
    artifacts = save(module, root / "model")
    proc = ServerProcess(
        artifacts,
        root / "keys",
        root / "server.log",
        "--workers",
        "2",
        "--max-loaded-keys",
        "1",
        "--max-request-mb",
        "1",
        "--max-key-mb",
        "1",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def remote(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> RemoteClient:
    client = RemoteClient(server.url, key_dir=tmp_path_factory.mktemp("client-keys"))
    client.upload_keys()
    yield client
    client.close()


def _expected(module: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(module.quantized_forward(module.quantize_input(x)))


def test_info_and_health(server: ServerProcess, module: Any) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    info = httpx.get(f"{server.url}/info").json()
    assert info["input_names"] == list(module.ordered_module_input_names)
    assert info["inputs"][0]["shape"] == [1, 4] and info["inputs"][0]["encrypted"]
    assert info["outputs"][0]["shape"] == [1, 3]
    assert info["cost"]["programmable_bootstrap_count"] == 0
    assert info["cost"]["max_bit_width"] == module.fhe_circuit.graph.maximum_integer_bit_width()
    assert info["versions"]["concrete-python"] == info["server_versions"]["concrete-python"]
    assert info["limits"] == {
        "max_key_bytes": 1024 * 1024,
        "max_request_bytes": 1024 * 1024,
        "max_loaded_keys": 1,
        "workers": 2,
    }


def test_encrypted_result_equals_the_clear_integers(remote: RemoteClient, module: Any) -> None:
    x = ROWS[:6]
    np.testing.assert_array_equal(remote.predict(x, dequantize=False), _expected(module, x))
    np.testing.assert_array_equal(remote.predict(x), module.forward(x))


def _bad_requests(remote: RemoteClient, other_client: FHEModelClient) -> dict[str, Any]:
    good = remote.client.quantize_encrypt_serialize(ROWS[:2])
    keys = remote.client.get_serialized_evaluation_keys()
    row = wire.unpack_rows(good)[0]
    key = remote.key_id
    unknown = secrets.token_urlsafe(32)
    foreign = other_client.quantize_encrypt_serialize(ROWS[:1, :3])
    big = b"\0" * (1024 * 1024 + 1)
    return {
        "unknown key id": (f"/predict/{unknown}", good, 404, "unknown_key"),
        "malformed key id": ("/predict/..%2F..%2Fetc", good, 404, None),
        "short key id": ("/predict/abc", good, 404, "unknown_key"),
        "garbage ciphertexts": (f"/predict/{key}", b"garbage", 400, "invalid_ciphertexts"),
        "truncated ciphertexts": (f"/predict/{key}", good[:-3], 400, "invalid_ciphertexts"),
        "padded ciphertexts": (f"/predict/{key}", good + b"\0", 400, "invalid_ciphertexts"),
        "damaged value": (
            f"/predict/{key}",
            wire.pack_rows([[b"\1" * len(row[0])]]),
            400,
            "invalid_ciphertexts",
        ),
        "wrong value count": (
            f"/predict/{key}",
            wire.pack_rows([[row[0], row[0]]]),
            400,
            "invalid_ciphertexts",
        ),
        "foreign ciphertexts (other shape)": (
            f"/predict/{key}",
            foreign,
            400,
            "invalid_ciphertexts",
        ),
        "request too large": (f"/predict/{key}", big, 413, "too_large"),
        "garbage keys": ("/keys", b"garbage!", 400, "invalid_evaluation_keys"),
        "truncated keys": ("/keys", keys[:-8], 400, "invalid_evaluation_keys"),
        "empty keys": ("/keys", b"", 400, "invalid_evaluation_keys"),
        "keys too large": ("/keys", big, 413, "too_large"),
    }


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(
    server: ServerProcess, remote: RemoteClient, module: Any, tmp_path: Path
) -> None:
    other_client = FHEModelClient(save(linear_module(n_in=3, n_out=2, seed=1), tmp_path / "o"))
    stored_before = sorted(p.name for p in server.keys_dir.iterdir())
    for name, (path, body, status, code) in _bad_requests(remote, other_client).items():
        reply = httpx.post(f"{server.url}{path}", content=body, timeout=120)
        assert reply.status_code == status, (name, reply.text)
        doc = reply.json()
        if code is not None:
            assert doc["error"] == code, (name, doc)
            assert len(doc["detail"]) > 10, name
        assert httpx.get(f"{server.url}/health").status_code == 200, name
    # streamed without a length: the limit is enforced while reading
    chunks = (b"\0" * 65536 for _ in range(20))
    reply = httpx.post(f"{server.url}/keys", content=chunks, timeout=60)
    assert reply.status_code == 413 and reply.json()["error"] == "too_large"
    # refused uploads leave nothing behind
    assert sorted(p.name for p in server.keys_dir.iterdir()) == stored_before
    x = ROWS[10:13]
    np.testing.assert_array_equal(remote.predict(x, dequantize=False), _expected(module, x))


def test_the_remote_client_reports_server_errors(server: ServerProcess) -> None:
    with pytest.raises(errors.RemoteError) as info:
        RemoteClient("http://127.0.0.1:9", timeout=5)  # nothing listens there
    assert info.value.status == 0
    client = RemoteClient(server.url)
    client.key_id = secrets.token_urlsafe(32)  # forgotten by the server: uploads again
    client.predict(ROWS[:1])
    assert client.key_id is not None
    with pytest.raises(errors.RemoteError) as info:
        client.run(b"garbage")
    assert info.value.status == 400 and info.value.code == "invalid_ciphertexts"
    client.close()


def test_two_clients_with_different_keys_at_the_same_time(
    server: ServerProcess, remote: RemoteClient, module: Any, tmp_path: Path
) -> None:
    other = RemoteClient(server.url, key_dir=tmp_path)
    other.upload_keys()
    assert other.key_id != remote.key_id
    inputs = {0: ROWS[20:26], 1: ROWS[30:36]}
    results: dict[int, Any] = {}
    failures: list[BaseException] = []

    def run(index: int, client: RemoteClient) -> None:
        try:
            for _ in range(3):
                results[index] = client.predict(inputs[index], dequantize=False)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((remote, other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failures, failures
    for index in (0, 1):
        np.testing.assert_array_equal(results[index], _expected(module, inputs[index]))
    # each client's ciphertexts only decrypt with its own key
    crossed = remote.client.deserialize_decrypt(
        other.run(other.client.quantize_encrypt_serialize(inputs[1]))
    )
    assert not np.array_equal(crossed, _expected(module, inputs[1]))
    other.close()


def test_the_cache_of_loaded_keys_is_bounded(
    server: ServerProcess, remote: RemoteClient, module: Any
) -> None:
    clients = [RemoteClient(server.url) for _ in range(2)]
    x = ROWS[40:42]
    for client in [*clients, remote]:  # three keys, two workers keeping one each
        np.testing.assert_array_equal(client.predict(x, dequantize=False), _expected(module, x))
        assert httpx.get(f"{server.url}/info").json()["loaded_keys"] <= 2
    for client in clients:
        client.close()


@pytest.mark.slow
def test_health_answers_during_a_long_run(server: ServerProcess, remote: RemoteClient) -> None:
    x = np.repeat(ROWS[:50], 16, axis=0)  # 800 rows: several seconds of circuit runs
    serialized = remote.client.quantize_encrypt_serialize(x)
    done = threading.Event()
    outcome: list[Any] = []

    def predict() -> None:
        outcome.append(remote.run(serialized))
        done.set()

    thread = threading.Thread(target=predict)
    thread.start()
    time.sleep(0.5)
    latencies = []
    while not done.is_set() and len(latencies) < 5:
        start = time.monotonic()
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        latencies.append(time.monotonic() - start)
    answered_during_run = not done.is_set()
    thread.join(timeout=600)
    assert outcome and latencies
    assert answered_during_run, "the run ended before the health checks; make it longer"
    assert max(latencies) < 2.0


def test_the_server_never_stores_a_secret_key(
    server: ServerProcess, remote: RemoteClient, tmp_path: Path
) -> None:
    secret_keys = [
        bytes(k.serialize())
        for k in remote.client.client.keys._keyset.get_client_keys().get_secret_keys()
    ]
    full_keyset = bytes(remote.client.client.keys.serialize())
    written = [p for p in server.keys_dir.rglob("*") if p.is_file()]
    written += [p for p in server.artifact_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".keys" for p in written)
    for path in written:
        data = path.read_bytes()
        assert full_keyset not in data, path
        for key in secret_keys:
            payload = key[len(key) // 2 :]
            for start in range(0, len(payload) - 64, 64):
                assert payload[start : start + 64] not in data, path
    # what was stored for this client is exactly what it uploaded: its evaluation keys
    stored = server.keys_dir / f"{remote.key_id}.keys"
    assert stored.read_bytes() == remote.client.get_serialized_evaluation_keys()


def test_the_cli_runs_a_npy_file_through_the_server(
    server: ServerProcess, module: Any, tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", ROWS[:4])
    status = cli(
        [
            "remote-predict",
            server.url,
            str(tmp_path / "x.npy"),
            "--output",
            str(tmp_path / "y.npy"),
            "--integers",
        ]
    )
    assert status == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), _expected(module, ROWS[:4]))


@pytest.mark.slow
def test_keys_survive_a_restart(server: ServerProcess, remote: RemoteClient, module: Any) -> None:
    key_id = remote.key_id
    stored = sorted(p.name for p in server.keys_dir.iterdir())
    server.restart()
    x = ROWS[50:53]
    reply = httpx.post(
        f"{server.url}/predict/{key_id}",
        content=remote.client.quantize_encrypt_serialize(x),
        timeout=300,
    )
    assert reply.status_code == 200, reply.text
    np.testing.assert_array_equal(
        remote.client.deserialize_decrypt(reply.content), _expected(module, x)
    )
    assert sorted(p.name for p in server.keys_dir.iterdir()) == stored  # no new upload
