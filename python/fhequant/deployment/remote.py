"""``RemoteClient``: an :class:`FHEModelClient` that talks to ``fhequant serve`` over HTTP.

::

    client = RemoteClient("http://127.0.0.1:8000", key_dir="keys")
    y = client.predict(x)  # keygen (once), upload evaluation keys (once), encrypt, run, decrypt

The secret key stays in this process (and ``key_dir``); the server gets the evaluation keys
and ciphertexts only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fhequant.deployment.artifacts import CLIENT_ZIP
from fhequant.deployment.client import FHEModelClient
from fhequant.errors import DeploymentError, MissingDependencyError, RemoteError

__all__ = ["RemoteClient"]


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:
        raise MissingDependencyError(
            "RemoteClient needs httpx: pip install fhequant[serve]"
        ) from exc
    return httpx


class RemoteClient:
    """Encrypted inference on a remote ``fhequant serve``.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        path_dir: the directory holding the model's ``client.zip``; None downloads it from
            the server (``GET /client.zip``) into a temporary directory.
        key_dir: where the client's keys are persisted (None: in memory only).
        timeout: seconds to wait for a prediction (None: no limit).
    """

    def __init__(
        self,
        url: str,
        path_dir: str | Path | None = None,
        key_dir: str | Path | None = None,
        timeout: float | None = 600.0,
    ) -> None:
        httpx = _httpx()
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0))
        self._tmp: Any = None
        try:
            self._connect(path_dir, key_dir)
        except BaseException:
            self.close()
            raise

    def _connect(self, path_dir: str | Path | None, key_dir: str | Path | None) -> None:
        if path_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fhequant-client-")
            path_dir = Path(self._tmp.name)
            reply = self._request("GET", f"/{CLIENT_ZIP}")
            (path_dir / CLIENT_ZIP).write_bytes(reply.content)
        self.client = FHEModelClient(path_dir, key_dir=key_dir)
        self.key_id: str | None = None
        server = self.info()
        if server.get("fingerprint") != self.client.metadata.get("fingerprint"):
            raise DeploymentError(
                f"the server at {self.url} serves another model than {Path(path_dir)}/"
                f"{CLIENT_ZIP} (different fingerprints); use the client.zip of that server"
            )

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        httpx = _httpx()
        try:
            reply = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"{method} {self.url}{path} failed: {exc}") from exc
        if reply.status_code >= 400:
            try:
                body = reply.json()
                code, detail = body.get("error"), body.get("detail")
            except ValueError:
                code, detail = None, reply.text[:500]
            raise RemoteError(
                f"{method} {path}: the server answered {reply.status_code}"
                + (f" ({code})" if code else "")
                + f": {detail}",
                status=reply.status_code,
                code=code,
            )
        return reply

    def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return dict(self._request("GET", "/health").json())

    def info(self) -> dict[str, Any]:
        """``GET /info``: shapes, bit widths, cost figures, versions, limits."""
        return dict(self._request("GET", "/info").json())

    def upload_keys(self, force: bool = False) -> str:
        """Generate (or load) the keys and upload the evaluation keys once.

        Args:
            force: upload again even if this client has uploaded them already.

        Returns:
            The key id the server issued.
        """
        if self.key_id is not None and not force:
            return self.key_id
        keys = self.client.get_serialized_evaluation_keys()
        reply = self._request(
            "POST", "/keys", content=keys, headers={"content-type": "application/octet-stream"}
        )
        self.key_id = str(reply.json()["key_id"])
        return self.key_id

    def run(self, serialized: bytes) -> bytes:
        """Send ciphertexts (``quantize_encrypt_serialize``) and return the encrypted result.

        Uploads the evaluation keys first if needed, and once more if the server no longer
        knows them.
        """
        key_id = self.upload_keys()
        headers = {"content-type": "application/octet-stream"}
        try:
            reply = self._request("POST", f"/predict/{key_id}", content=serialized, headers=headers)
        except RemoteError as exc:
            if exc.code != "unknown_key":
                raise
            key_id = self.upload_keys(force=True)
            reply = self._request("POST", f"/predict/{key_id}", content=serialized, headers=headers)
        return bytes(reply.content)

    def predict(self, *x: Any, dequantize: bool = True) -> Any:
        """Encrypted inference of a batch: quantize, encrypt, run remotely, decrypt.

        Args:
            *x: one float array per model input, rows on axis 0.
            dequantize: return floats (default) or the output integers.

        Returns:
            The outputs (a tuple if several), rows in the order given.
        """
        result = self.run(self.client.quantize_encrypt_serialize(*x))
        if dequantize:
            return self.client.deserialize_decrypt_dequantize(result)
        return self.client.deserialize_decrypt(result)

    def close(self) -> None:
        """Close the HTTP connection (and the downloaded client.zip's directory)."""
        self._http.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
