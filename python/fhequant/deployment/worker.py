"""One process per loaded evaluation key: where the inference server runs circuits.

concrete aborts the whole process (a C++ assertion, not a Python exception) when a circuit
runs with evaluation keys that deserialize fine but were made for another circuit. So the
server never runs a circuit in its own process: each loaded key gets a worker process
(:func:`main`, started with ``python -c``) that loads the compiled circuit
and that key once, then runs requests one at a time. A worker that dies takes only its own
client's request with it; the server answers that client with an error and keeps serving
the others. :class:`WorkerPool` keeps at most ``max_loaded`` workers (the bounded cache of
loaded keys), evicting the least recently used.

The pipe protocol (no pickle): a request is an 8-byte big-endian length and the message of
:mod:`fhequant.deployment.wire`; a reply is a status byte (0 ok, 1 error), an 8-byte length
and either the result message or a JSON error ``{"error": class name, "message": text}``.
The worker sends one reply when it has loaded the circuit and the key (empty, or the error).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fhequant import errors
from fhequant.errors import DeploymentError, EvaluationKeyError

__all__ = ["WorkerDiedError", "WorkerPool", "WorkerProcess", "main"]

_LENGTH = struct.Struct(">Q")
_ENTRY = "import sys; from fhequant.deployment.worker import main; sys.exit(main(sys.argv[1:]))"
_OK, _ERROR = 0, 1
#: Errors a worker may report, re-raised by the parent as the same class.
_REPORTED = (
    "ArtifactError",
    "ArtifactVersionError",
    "CiphertextError",
    "EvaluationKeyError",
    "NotCompiledError",
)


class WorkerDiedError(EvaluationKeyError):
    """A worker process ended while loading keys or running a circuit (concrete aborted)."""


class _ClosedError(Exception):
    """The worker was evicted between the pool's lookup and the request (the pool retries)."""


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_reply(out: IO[bytes], status: int, payload: bytes) -> None:
    out.write(bytes([status]) + _LENGTH.pack(len(payload)) + payload)
    out.flush()


def _error_payload(exc: BaseException) -> bytes:
    name = type(exc).__name__ if isinstance(exc, DeploymentError) else "DeploymentError"
    return json.dumps({"error": name, "message": str(exc)}).encode("utf-8")


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send fd 2 to /dev/null: concrete logs every failed read of damaged keys (thousands of
    lines) before it raises; the raised error is reported instead."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    """The worker process: load the circuit and the key, then serve requests until EOF."""
    args = sys.argv[1:] if argv is None else argv
    server_dir, key_file = Path(args[0]), Path(args[1])
    # the protocol owns the real stdout; anything printed (by concrete too) goes to stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    from fhequant.deployment.server import FHEModelServer, load_evaluation_keys

    try:
        server = FHEModelServer(server_dir).load()
        with _native_stderr_silenced():
            keys = load_evaluation_keys(key_file)
    except Exception as exc:
        _write_reply(out, _ERROR, _error_payload(exc))
        return 1
    _write_reply(out, _OK, b"")
    while True:
        head = _read_exactly(requests, _LENGTH.size)
        if head is None:
            return 0
        message = _read_exactly(requests, _LENGTH.unpack(head)[0])
        if message is None:
            return 0
        try:
            result = server.run(message, keys)
        except Exception as exc:
            _write_reply(out, _ERROR, _error_payload(exc))
        else:
            _write_reply(out, _OK, result)


def _raise_reported(payload: bytes) -> None:
    try:
        doc = json.loads(payload.decode("utf-8"))
        name, message = str(doc["error"]), str(doc["message"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise DeploymentError("the worker process sent an unreadable error") from None
    cls = getattr(errors, name) if name in _REPORTED else DeploymentError
    raise cls(message)


class WorkerProcess:
    """A worker process serving one evaluation key (requests one at a time).

    Args:
        server_dir: the directory holding ``server.zip``.
        key_file: the evaluation keys on disk.
    """

    def __init__(self, server_dir: Path, key_file: Path) -> None:
        self.server_dir, self.key_file = server_dir, key_file
        self.lock = threading.Lock()
        self.closed = False
        self._proc: subprocess.Popen[bytes] | None = None

    def _reply(self) -> bytes:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise DeploymentError("the worker process is not running")
        head = _read_exactly(proc.stdout, 1 + _LENGTH.size)
        payload = None if head is None else _read_exactly(proc.stdout, _LENGTH.unpack(head[1:])[0])
        if head is None or payload is None:
            code = proc.wait()
            self._proc = None
            raise WorkerDiedError(
                f"the computation aborted with these evaluation keys (worker exit status "
                f"{code}): they do not fit this model; upload the evaluation keys of a client "
                "made from this model's client.zip"
            )
        if head[0] != _OK:
            _raise_reported(payload)
        return payload

    def _start(self) -> None:
        if self._proc is not None:
            return
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _ENTRY, str(self.server_dir), str(self.key_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            self._reply()
        except DeploymentError:
            self._stop()
            raise

    def start(self) -> None:
        """Start the process and wait until it has loaded the circuit and the key.

        Raises:
            EvaluationKeyError: keys that cannot be read (or that crash the worker).
            ArtifactError: the circuit cannot be loaded.
        """
        with self.lock:
            if not self.closed:
                self._start()

    def run(self, message: bytes) -> bytes:
        """Run a batch message (see :mod:`fhequant.deployment.wire`) and return the result."""
        with self.lock:
            if self.closed:
                raise _ClosedError
            self._start()
            proc = self._proc
            if proc is None or proc.stdin is None:
                raise DeploymentError("the worker process is not running")
            try:
                proc.stdin.write(_LENGTH.pack(len(message)) + message)
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # the reply read below reports the dead worker
            return self._reply()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        """End the process (after the request it is running, if any)."""
        with self.lock:
            self.closed = True
            self._stop()

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return None if self._proc is None else self._proc.pid


class WorkerPool:
    """At most ``max_loaded`` worker processes, one per key id, least recently used evicted.

    Args:
        server_dir: the directory holding ``server.zip``.
        max_loaded: the number of keys kept loaded.
    """

    def __init__(self, server_dir: Path, max_loaded: int) -> None:
        self.server_dir = server_dir
        self.max_loaded = max(1, int(max_loaded))
        self._workers: OrderedDict[str, WorkerProcess] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_id: str, key_file: Path) -> WorkerProcess:
        """The worker of a key (created if needed; may evict the least recently used)."""
        evicted = []
        with self._lock:
            worker = self._workers.get(key_id)
            if worker is None:
                worker = WorkerProcess(self.server_dir, key_file)
                self._workers[key_id] = worker
            self._workers.move_to_end(key_id)
            while len(self._workers) > self.max_loaded:
                evicted.append(self._workers.popitem(last=False)[1])
        for old in evicted:  # closing waits for a running request: not on this thread
            threading.Thread(target=old.close, daemon=True).start()
        return worker

    def loaded(self) -> list[str]:
        """The key ids with a worker, least recently used first."""
        with self._lock:
            return list(self._workers)

    def drop(self, key_id: str) -> None:
        """End and forget the worker of a key."""
        with self._lock:
            worker = self._workers.pop(key_id, None)
        if worker is not None:
            threading.Thread(target=worker.close, daemon=True).start()

    def close(self) -> None:
        """End every worker."""
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.close()

    def run(self, key_id: str, key_file: Path, message: bytes) -> Any:
        """Run a batch with a key's worker (blocking: call it off the event loop)."""
        while True:
            worker = self.get(key_id, key_file)
            try:
                return worker.run(message)
            except _ClosedError:
                continue  # evicted meanwhile: a new worker is made
            except WorkerDiedError:
                self.drop(key_id)
                raise


if __name__ == "__main__":
    raise SystemExit(main())
