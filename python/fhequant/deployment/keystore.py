"""The inference server's evaluation keys on disk.

Each uploaded key gets an unguessable id (``secrets.token_urlsafe(32)``: 256 random bits) and
two files in the key directory: ``<id>.keys`` (the bytes the client uploaded, written while
they stream in) and ``<id>.json`` (size, upload time, and the fingerprint of the model the
keys are for). Keys persist across restarts of the server; keys uploaded for another model
(another fingerprint) are not offered to this one. Ids are checked against their exact form
before any path is built from them.
"""

from __future__ import annotations

import json
import re
import secrets
import struct
import time
from pathlib import Path
from typing import Any

from fhequant.errors import EvaluationKeyError, RequestTooLargeError, UnknownKeyError

__all__ = ["KeyStore"]

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{43}")


#: Cap'n Proto's default limit on the segments of one message.
_MAX_SEGMENTS = 512


def check_framing(path: Path, size: int) -> None:
    """Check that a file is exactly one Cap'n Proto message, the form of concrete's serialized
    evaluation keys: its segment table must account for every byte. Garbage and truncated
    uploads are refused here, cheaply, before concrete reads them.

    Raises:
        EvaluationKeyError: the framing does not match the file.
    """
    with path.open("rb") as handle:
        first = handle.read(4)
        count = struct.unpack("<I", first)[0] + 1 if len(first) == 4 else 0
        table = handle.read(4 * count) if 0 < count <= _MAX_SEGMENTS else b""
    if len(table) != 4 * count or count == 0:
        raise EvaluationKeyError(
            f"the upload ({size} bytes) is not serialized evaluation keys; send the bytes of "
            "FHEModelClient.get_serialized_evaluation_keys() unchanged"
        )
    head = 4 + 4 * count
    expected = head + head % 8 + 8 * sum(struct.unpack(f"<{count}I", table))
    if expected != size:
        state = "truncated" if size < expected else "followed by extra bytes"
        raise EvaluationKeyError(
            f"the evaluation keys are {state}: their framing announces {expected} bytes, "
            f"{size} were received; send the bytes of "
            "FHEModelClient.get_serialized_evaluation_keys() unchanged"
        )


class KeyStore:
    """Evaluation keys stored under a directory.

    Args:
        directory: where the keys are written (created if needed, mode 0700).
        fingerprint: the fingerprint of the served model.
    """

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        self.fingerprint = fingerprint

    def _paths(self, key_id: str) -> tuple[Path, Path]:
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise UnknownKeyError(
                "unknown evaluation-key id (not an id this server issues); upload the "
                "evaluation keys first (POST /keys)"
            )
        return self.directory / f"{key_id}.keys", self.directory / f"{key_id}.json"

    def key_file(self, key_id: str) -> Path:
        """The file of a stored key.

        Raises:
            UnknownKeyError: no such key for this model.
        """
        keys, meta = self._paths(key_id)
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = None
        if not keys.is_file() or not isinstance(info, dict):
            raise UnknownKeyError(
                f"unknown evaluation-key id {key_id!r}; upload the evaluation keys first "
                "(POST /keys)"
            )
        if info.get("fingerprint") != self.fingerprint:
            raise UnknownKeyError(
                f"the evaluation keys {key_id!r} were uploaded for another model; upload the "
                "keys of a client made from this model's client.zip"
            )
        return keys

    def new_upload(self) -> tuple[str, Path]:
        """A fresh key id and the temporary file to stream its bytes into."""
        key_id = secrets.token_urlsafe(32)
        return key_id, self.directory / f"{key_id}.part"

    def write_stream(self, handle: Any, chunk: bytes, written: int, limit: int) -> int:
        """Append a chunk to an upload, enforcing the size limit.

        Returns:
            The bytes written so far.

        Raises:
            RequestTooLargeError: the upload exceeds ``limit``.
        """
        written += len(chunk)
        if written > limit:
            raise RequestTooLargeError(
                f"the evaluation keys exceed the server's limit of {limit} bytes "
                "(fhequant serve --max-key-mb)"
            )
        handle.write(chunk)
        return written

    def commit(self, key_id: str, part: Path, size: int) -> None:
        """Make an uploaded key available under its id.

        Raises:
            EvaluationKeyError: the bytes are not one complete serialized key set.
        """
        check_framing(part, size)
        keys, meta = self._paths(key_id)
        meta.write_text(
            json.dumps({"fingerprint": self.fingerprint, "size": size, "uploaded": time.time()}),
            encoding="utf-8",
        )
        part.replace(keys)

    def remove(self, key_id: str) -> None:
        """Delete a key's files (an unknown id is ignored)."""
        try:
            keys, meta = self._paths(key_id)
        except UnknownKeyError:
            return
        keys.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)

    def ids(self) -> list[str]:
        """The ids of the keys stored for this model."""
        out = []
        for meta in sorted(self.directory.glob("*.json")):
            try:
                self.key_file(meta.stem)
            except UnknownKeyError:
                continue
            out.append(meta.stem)
        return out
