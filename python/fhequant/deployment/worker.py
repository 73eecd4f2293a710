"""The worker processes where the inference server runs circuits.

concrete aborts the whole process (a C++ assertion, not a Python exception) when a circuit
runs with evaluation keys that deserialize fine but were made for another circuit. So the
server never runs a circuit in its own process: a fixed set of worker processes (started
with the server, :func:`main`) each load the compiled circuit once, then run requests one at
a time, each with the evaluation keys it names. A worker keeps the keys it has loaded, at
most ``max_loaded`` of them, evicting the least recently used (the bounded cache of loaded
keys); the pool sends a request to an idle worker that has its key loaded when there is one.
A worker that dies takes only the request it was running with it: the server answers that
client with an error, starts a new worker and keeps serving the others.

The pipe protocol (no pickle): a request is a 4-byte big-endian length and the UTF-8 path of
the key file, then an 8-byte length and the message of :mod:`fhequant.deployment.wire` (an
empty message only loads the key); a reply is a status byte (0 ok, 1 error), an 8-byte
length and either the result message or a JSON error ``{"error": class name, "message":
text}``. A worker sends one reply when it has loaded the circuit (empty, or the error).
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
_PATH_LENGTH = struct.Struct(">I")
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


def _read_request(stream: IO[bytes]) -> tuple[str, bytes] | None:
    head = _read_exactly(stream, _PATH_LENGTH.size)
    path = None if head is None else _read_exactly(stream, _PATH_LENGTH.unpack(head)[0])
    size = None if path is None else _read_exactly(stream, _LENGTH.size)
    message = None if size is None else _read_exactly(stream, _LENGTH.unpack(size)[0])
    if path is None or message is None:
        return None
    return path.decode("utf-8"), message


def main(argv: list[str] | None = None) -> int:
    """A worker process: load the circuit, then serve requests until its input closes.

    Args:
        argv: ``[SERVER_DIR, MAX_LOADED]``.
    """
    args = sys.argv[1:] if argv is None else argv
    server_dir, max_loaded = Path(args[0]), max(1, int(args[1]))
    # the protocol owns the real stdout; anything printed (by concrete too) goes to stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    from fhequant.deployment.server import FHEModelServer, load_evaluation_keys

    try:
        server = FHEModelServer(server_dir).load()
    except Exception as exc:
        _write_reply(out, _ERROR, _error_payload(exc))
        return 1
    _write_reply(out, _OK, b"")
    loaded: OrderedDict[str, Any] = OrderedDict()
    while True:
        request = _read_request(requests)
        if request is None:
            return 0
        key_file, message = request
        try:
            keys = loaded.get(key_file)
            if keys is None:
                with _native_stderr_silenced():
                    keys = load_evaluation_keys(Path(key_file))
                loaded[key_file] = keys
                while len(loaded) > max_loaded:
                    loaded.popitem(last=False)
            loaded.move_to_end(key_file)
            result = server.run(message, keys) if message else b""
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
    """A worker process: runs requests one at a time, keeping up to ``max_loaded`` keys.

    Args:
        server_dir: the directory holding ``server.zip``.
        max_loaded: the keys it keeps loaded.
    """

    def __init__(self, server_dir: Path, max_loaded: int) -> None:
        self.server_dir, self.max_loaded = server_dir, max_loaded
        #: the key ids it has loaded, least recently used first (mirrors the worker's cache)
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self._loaded_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False

    def spawn(self) -> None:
        """Start the process (it loads the circuit in the background)."""
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _ENTRY, str(self.server_dir), str(self.max_loaded)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            self._ready = False
            self._forget_keys()

    def _reply(self) -> bytes:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise DeploymentError("the worker process is not running")
        head = _read_exactly(proc.stdout, 1 + _LENGTH.size)
        payload = None if head is None else _read_exactly(proc.stdout, _LENGTH.unpack(head[1:])[0])
        if head is None or payload is None:
            code = proc.wait()
            self._proc = None
            self._forget_keys()
            raise WorkerDiedError(
                f"the computation aborted with these evaluation keys (worker exit status "
                f"{code}): they do not fit this model; upload the evaluation keys of a client "
                "made from this model's client.zip"
            )
        if head[0] != _OK:
            _raise_reported(payload)
        return payload

    def run(self, key_id: str, key_file: Path, message: bytes) -> bytes:
        """Run a batch message with a key (an empty message only loads the key)."""
        self.spawn()
        if not self._ready:
            self._reply()
            self._ready = True
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise DeploymentError("the worker process is not running")
        path = str(key_file).encode("utf-8")
        try:
            proc.stdin.write(_PATH_LENGTH.pack(len(path)) + path + _LENGTH.pack(len(message)))
            proc.stdin.write(message)
            proc.stdin.flush()
        except OSError:
            pass  # the reply read below reports the dead worker
        result = self._reply()
        with self._loaded_lock:
            self.loaded[key_id] = None
            self.loaded.move_to_end(key_id)
            while len(self.loaded) > self.max_loaded:
                self.loaded.popitem(last=False)
        return result

    def _forget_keys(self) -> None:
        with self._loaded_lock:
            self.loaded.clear()

    def loaded_ids(self) -> list[str]:
        """The key ids it has loaded, least recently used first."""
        with self._loaded_lock:
            return list(self.loaded)

    def close(self) -> None:
        """End the process."""
        proc, self._proc = self._proc, None
        self._forget_keys()
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


class WorkerPool:
    """A fixed set of worker processes; each request takes an idle one.

    Args:
        server_dir: the directory holding ``server.zip``.
        workers: the number of worker processes (requests run in parallel up to it).
        max_loaded: the keys each worker keeps loaded.
    """

    def __init__(self, server_dir: Path, workers: int = 2, max_loaded: int = 4) -> None:
        self.max_loaded = max(1, int(max_loaded))
        self._workers = [WorkerProcess(server_dir, self.max_loaded) for _ in range(max(1, workers))]
        self._idle = list(self._workers)
        self._ready = threading.Condition()
        self._closed = False

    @property
    def size(self) -> int:
        """The number of worker processes."""
        return len(self._workers)

    def start(self) -> None:
        """Start every worker process (they load the circuit in the background)."""
        for worker in self._workers:
            worker.spawn()

    def loaded(self) -> list[str]:
        """The key ids loaded in some worker."""
        with self._ready:
            return sorted({k for w in self._workers for k in w.loaded_ids()})

    def _take(self, key_id: str) -> WorkerProcess:
        with self._ready:
            while not self._idle:
                if self._closed:
                    raise DeploymentError("the server is shutting down")
                self._ready.wait()
            if self._closed:
                raise DeploymentError("the server is shutting down")
            chosen = next((w for w in self._idle if key_id in w.loaded), None)
            if chosen is None:  # the idle worker with the fewest keys loaded
                chosen = min(self._idle, key=lambda w: len(w.loaded))
            self._idle.remove(chosen)
            return chosen

    def _give_back(self, worker: WorkerProcess) -> None:
        with self._ready:
            self._idle.append(worker)
            self._ready.notify()

    def run(self, key_id: str, key_file: Path, message: bytes) -> bytes:
        """Run a batch with a key on an idle worker (blocking: call it off the event loop).

        Raises:
            WorkerDiedError: the worker died (keys that do not fit the model); it is
                replaced by a new one.
            CiphertextError, EvaluationKeyError: what the worker reported.
        """
        worker = self._take(key_id)
        try:
            return worker.run(key_id, key_file, message)
        except WorkerDiedError:
            worker.close()
            worker.spawn()
            raise
        finally:
            self._give_back(worker)

    def load(self, key_id: str, key_file: Path) -> None:
        """Load a key in a worker (checks that concrete can read it)."""
        self.run(key_id, key_file, b"")

    def close(self) -> None:
        """End every worker (after the requests they are running)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            while len(self._idle) < len(self._workers):
                self._ready.wait(timeout=60)
                if len(self._idle) < len(self._workers):
                    break
        for worker in self._workers:
            worker.close()


if __name__ == "__main__":
    raise SystemExit(main())
