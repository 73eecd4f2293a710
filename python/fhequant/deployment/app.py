"""The encrypted-inference HTTP server (``fhequant serve``): a FastAPI app.

Endpoints (errors are JSON ``{"error": code, "detail": text}`` with a 4xx status):

* ``GET /health``: ``{"status": "ok"}``; answers while circuits run (they run in worker
  processes, waited for off the event loop).
* ``GET /info``: the model's inputs and outputs (shapes, bit widths), cost figures, versions,
  the model fingerprint and the server's limits.
* ``GET /client.zip``: the client artifact, when it sits next to ``server.zip``.
* ``POST /keys``: the evaluation keys as the raw request body (``application/octet-stream``),
  streamed to disk; answers ``201 {"key_id": ..., "size": ...}``.
* ``DELETE /keys/{key_id}``: forget a key.
* ``POST /predict/{key_id}``: the bytes of ``quantize_encrypt_serialize`` as the body;
  answers the serialized encrypted results (``application/octet-stream``).

The server receives evaluation keys and ciphertexts only; it never asks for, receives or
stores a secret key. Nothing is pickled.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations
# (``fastapi.Request``, imported lazily) at definition time.
import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fhequant.deployment.artifacts import (
    CLIENT_ZIP,
    SERVER_ZIP,
    check_document,
    load_json,
    read_zip,
    versions,
)
from fhequant.deployment.dev import SERVER_DOC, SERVER_MEMBERS
from fhequant.deployment.keystore import KeyStore
from fhequant.deployment.wire import unpack_rows
from fhequant.deployment.worker import WorkerDiedError, WorkerPool
from fhequant.errors import (
    CiphertextError,
    DeploymentError,
    EvaluationKeyError,
    MissingDependencyError,
    RequestTooLargeError,
    UnknownKeyError,
)

__all__ = ["DEFAULT_LIMITS", "create_app"]

MB = 1024 * 1024
#: Defaults of the server's limits.
DEFAULT_LIMITS = {
    "max_key_bytes": 4096 * MB,
    "max_request_bytes": 256 * MB,
    "max_loaded_keys": 4,
    "workers": 2,
}

#: Error class -> (HTTP status, error code); the first match wins.
_STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (UnknownKeyError, 404, "unknown_key"),
    (RequestTooLargeError, 413, "too_large"),
    (WorkerDiedError, 400, "evaluation_keys_do_not_fit"),
    (EvaluationKeyError, 400, "invalid_evaluation_keys"),
    (CiphertextError, 400, "invalid_ciphertexts"),
)


def _fastapi() -> Any:
    try:
        import fastapi
    except ImportError as exc:
        raise MissingDependencyError(
            "the inference server needs FastAPI and uvicorn: pip install fhequant[serve]"
        ) from exc
    return fastapi


def create_app(
    artifact_dir: str | Path,
    keys_dir: str | Path | None = None,
    max_key_bytes: int = DEFAULT_LIMITS["max_key_bytes"],
    max_request_bytes: int = DEFAULT_LIMITS["max_request_bytes"],
    max_loaded_keys: int = DEFAULT_LIMITS["max_loaded_keys"],
    workers: int = DEFAULT_LIMITS["workers"],
) -> Any:
    """The ASGI app serving a model saved by ``FHEModelDev``.

    Args:
        artifact_dir: the directory holding ``server.zip`` (and optionally ``client.zip``).
        keys_dir: where uploaded evaluation keys are stored (default: ``artifact_dir/keys``);
            they persist across restarts.
        max_key_bytes: the largest evaluation-key upload accepted.
        max_request_bytes: the largest predict request accepted.
        max_loaded_keys: how many keys each worker process keeps loaded.
        workers: the worker processes running circuits (requests run in parallel up to it).

    Returns:
        A FastAPI app (run it with uvicorn).

    Raises:
        MissingDependencyError: FastAPI is not installed.
        ArtifactError: ``server.zip`` is missing or damaged.
    """
    fastapi = _fastapi()
    from fastapi import Request
    from fastapi.responses import FileResponse, JSONResponse, Response

    artifact_dir = Path(artifact_dir)
    server_zip = artifact_dir / SERVER_ZIP
    doc = check_document(
        load_json(read_zip(server_zip, SERVER_MEMBERS)["server.json"], str(server_zip)),
        SERVER_DOC,
        str(server_zip),
    )
    n_inputs = len(doc.get("inputs") or [])
    store = KeyStore(
        Path(keys_dir) if keys_dir is not None else artifact_dir / "keys", str(doc["fingerprint"])
    )
    pool = WorkerPool(artifact_dir, workers=workers, max_loaded=max_loaded_keys)
    limits = {
        "max_key_bytes": int(max_key_bytes),
        "max_request_bytes": int(max_request_bytes),
        "max_loaded_keys": pool.max_loaded,
        "workers": pool.size,
    }

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        pool.start()
        yield
        await asyncio.to_thread(pool.close)

    app = fastapi.FastAPI(title="fhequant encrypted inference", lifespan=lifespan)
    app.state.pool, app.state.store, app.state.limits = pool, store, limits

    def error(status: int, code: str, detail: str) -> Any:
        return JSONResponse(status_code=status, content={"error": code, "detail": detail})

    @app.exception_handler(DeploymentError)
    async def deployment_error(_request: Any, exc: DeploymentError) -> Any:
        for cls, status, code in _STATUS:
            if isinstance(exc, cls):
                return error(status, code, str(exc))
        return error(500, "server_error", str(exc))

    def declared_length(request: Any, limit: int, what: str) -> None:
        text = request.headers.get("content-length")
        if text is not None and text.isdigit() and int(text) > limit:
            raise RequestTooLargeError(
                f"{what} of {int(text)} bytes exceed the server's limit of {limit} bytes"
            )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {
            "format_version": doc["format_version"],
            "versions": doc["versions"],
            "server_versions": versions(),
            "fingerprint": doc["fingerprint"],
            "input_names": doc.get("input_names"),
            "output_names": doc.get("output_names"),
            "inputs": doc.get("inputs"),
            "outputs": doc.get("outputs"),
            "cost": doc.get("cost"),
            "limits": limits,
            "loaded_keys": len(pool.loaded()),
        }

    @app.get("/client.zip")
    async def client_zip() -> Any:
        path = artifact_dir / CLIENT_ZIP
        if not path.is_file():
            return error(404, "no_client_artifact", "this server has no client.zip to offer")
        return FileResponse(path, media_type="application/zip", filename=CLIENT_ZIP)

    @app.post("/keys", status_code=201)
    async def upload_keys(request: Request) -> dict[str, Any]:
        declared_length(request, limits["max_key_bytes"], "the evaluation keys")
        key_id, part = store.new_upload()
        written = 0
        try:
            with part.open("wb") as handle:
                part.chmod(0o600)
                async for chunk in request.stream():
                    written = store.write_stream(handle, chunk, written, limits["max_key_bytes"])
            if written == 0:
                raise EvaluationKeyError("the request body is empty; send the evaluation keys")
            store.commit(key_id, part, written)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        try:  # load them now: unreadable keys are refused here, and the worker is warm
            await asyncio.to_thread(pool.load, key_id, store.key_file(key_id))
        except DeploymentError:
            store.remove(key_id)
            raise
        return {"key_id": key_id, "size": written}

    @app.delete("/keys/{key_id}")
    async def delete_keys(key_id: str) -> Any:
        store.key_file(key_id)
        store.remove(key_id)
        return Response(status_code=204)

    @app.post("/predict/{key_id}")
    async def predict(key_id: str, request: Request) -> Any:
        key_file = store.key_file(key_id)
        limit = limits["max_request_bytes"]
        declared_length(request, limit, "the ciphertexts")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestTooLargeError(
                    f"the ciphertexts exceed the server's limit of {limit} bytes "
                    "(fhequant serve --max-request-mb)"
                )
            chunks.append(chunk)
        message = b"".join(chunks)
        unpack_rows(message, n_inputs or None)  # malformed messages never reach a worker
        try:
            result = await asyncio.to_thread(pool.run, key_id, key_file, message)
        except WorkerDiedError:
            store.remove(key_id)
            raise
        return Response(content=result, media_type="application/octet-stream")

    return app
