"""Deployment benchmark: the demo MLP (digits, 64-32-10, 6 bits, rounding_threshold_bits=6)
through the client / server split and the HTTP server.

Prints ONE JSON object:

* ``client_keygen_s``: ``FHEModelClient.generate_private_and_evaluation_keys()``;
* ``evaluation_key_bytes``, ``ciphertext_in_bytes_per_row``, ``ciphertext_out_bytes_per_row``;
* ``server_run_s_per_row``: ``FHEModelServer.run`` in process (deserialize, run, serialize);
* ``http_upload_keys_s``: ``POST /keys`` of the evaluation keys to ``fhequant serve``;
* ``http_end_to_end_s_per_row``: ``RemoteClient.predict`` (quantize, encrypt, POST, run in a
  worker, decrypt, dequantize), keys already uploaded;
* the same-run baseline: ``inprocess_keygen_s`` (``circuit.keygen``) and
  ``inprocess_execute_s_per_row`` (``module.forward(x, fhe="execute")``, encrypt + run +
  decrypt in one process), and the ratios to it.

Timed runs alternate baseline and candidates (``FHEQUANT_BENCH_REPEATS``, default 2) and the
minimum of each is reported; ``FHEQUANT_BENCH_ROWS`` (default 1) rows per run. Needs
``fhequant[serve]`` and scikit-learn.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import fhequant
from fhequant import build_quantized_module
from fhequant.deployment import FHEModelClient, FHEModelDev, FHEModelServer, RemoteClient
from fhequant.fhe.demo import load_digits_split, measure, train_mlp


def _start_server(artifacts: Path, keys: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ)
    root = str(Path(fhequant.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "fhequant", "serve", str(artifacts), "--port", str(port)]
    command += ["--keys-dir", str(keys), "--workers", "1", "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=out, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")


def main() -> None:
    rows = int(os.environ.get("FHEQUANT_BENCH_ROWS", "1"))
    repeats = int(os.environ.get("FHEQUANT_BENCH_REPEATS", "2"))
    x_train, x_test, y_train, _ = load_digits_split()
    net = train_mlp(x_train, y_train, (32,))
    module = build_quantized_module(net, x_train, n_bits=6, rounding_threshold_bits=6)
    circuit, compile_s = measure(lambda: module.compile(x_train))
    x = x_test[:rows]
    expected = module.quantized_forward(module.quantize_input(x))
    out: dict[str, Any] = {
        "model": "demo MLP 64-32-10 on digits, n_bits=6, rounding_threshold_bits=6",
        "rows_per_run": rows,
        "repeats": repeats,
        "compile_s": compile_s,
        "pbs_count": int(circuit.programmable_bootstrap_count),
    }
    _, out["inprocess_keygen_s"] = measure(circuit.keygen)
    with tempfile.TemporaryDirectory(prefix="fhequant-bench-") as tmp:
        root = Path(tmp)
        _, out["dev_save_s"] = measure(lambda: FHEModelDev(root / "model", module).save())
        out["client_zip_bytes"] = (root / "model" / "client.zip").stat().st_size
        out["server_zip_bytes"] = (root / "model" / "server.zip").stat().st_size
        client = FHEModelClient(root / "model")
        _, out["client_keygen_s"] = measure(client.generate_private_and_evaluation_keys)
        keys = client.get_serialized_evaluation_keys()
        out["evaluation_key_bytes"] = len(keys)
        server = FHEModelServer(root / "model")
        _, out["server_load_s"] = measure(server.load)
        proc, url = _start_server(root / "model", root / "keys", root / "server.log")
        try:
            remote = RemoteClient(url)
            remote.client = client
            _, out["http_upload_keys_s"] = measure(remote.upload_keys)
            timings: dict[str, list[float]] = {"execute": [], "server_run": [], "http": []}
            for _ in range(repeats):  # alternate baseline and candidates
                got, t = measure(lambda: module.forward(x, fhe="execute"))
                timings["execute"].append(t)
                ciphertexts = client.quantize_encrypt_serialize(x)
                result, t = measure(lambda c=ciphertexts: server.run(c, keys))
                timings["server_run"].append(t)
                assert np.array_equal(client.deserialize_decrypt(result), expected)
                got, t = measure(lambda: remote.predict(x, dequantize=False))
                timings["http"].append(t)
                assert np.array_equal(got, expected)
            out["ciphertext_in_bytes_per_row"] = len(ciphertexts) / rows
            out["ciphertext_out_bytes_per_row"] = len(result) / rows
            remote.close()
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    execute = min(timings["execute"]) / rows
    out["inprocess_execute_s_per_row"] = execute
    out["server_run_s_per_row"] = min(timings["server_run"]) / rows
    out["http_end_to_end_s_per_row"] = min(timings["http"]) / rows
    out["server_run_over_inprocess_execute"] = out["server_run_s_per_row"] / execute
    out["http_end_to_end_over_inprocess_execute"] = out["http_end_to_end_s_per_row"] / execute
    out["client_keygen_over_inprocess_keygen"] = out["client_keygen_s"] / out["inprocess_keygen_s"]
    out["all_timings_s"] = timings
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
