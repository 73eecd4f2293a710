"""Helpers of the deployment tests: tiny compiled models and a server subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import fhequant
from fhequant.deployment import FHEModelDev

ROWS = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)


def linear_module(n_in: int = 4, n_out: int = 3, seed: int = 0) -> Any:
    """A compiled one-layer linear model: no table lookup, so no bootstrap key (key
    generation takes milliseconds, evaluation keys are a few bytes), real encryption."""
    import torch

    torch.manual_seed(seed)
    x = np.random.default_rng(seed).normal(size=(60, n_in)).astype(np.float32)
    module = fhequant.build_quantized_module(torch.nn.Linear(n_in, n_out), x, n_bits=3)
    module.compile(x)
    return module


def mlp_module(seed: int = 0) -> Any:
    """A compiled 4-3-2 ReLU MLP (table lookups: bootstrap and key-switch keys; key
    generation takes seconds)."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    module = fhequant.build_quantized_module(net, ROWS, n_bits=3)
    module.compile(ROWS)
    return module


def save(module: Any, path: Path) -> Path:
    """FHEModelDev(path, module).save(); returns path."""
    FHEModelDev(path, module).save()
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``fhequant serve`` as a subprocess on 127.0.0.1 (a free port); output to a log file."""

    def __init__(self, artifact_dir: Path, keys_dir: Path, log: Path, *extra: str) -> None:
        self.artifact_dir, self.keys_dir, self.log_path = artifact_dir, keys_dir, log
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 120.0) -> ServerProcess:
        import httpx

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        package_root = str(Path(fhequant.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        command = [sys.executable, "-m", "fhequant", "serve", str(self.artifact_dir)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--keys-dir", str(self.keys_dir)]
        command += ["--log-level", "warning", *self.extra]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the server did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()
