"""Reading and writing the deployment artifacts: ``client.zip`` and ``server.zip``.

Both are zip files of JSON documents (and, for the server, concrete's compiled artifact).
Every JSON document carries ``format`` (what it is), ``format_version`` and the ``versions``
of fhequant and concrete-python that wrote it; they are checked on load, before anything
else is read. Nothing is pickled: concrete's own artifacts are its JSON client specs and its
compiled library, fhequant's are JSON (quantizers through :mod:`fhequant.serialization`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from fhequant._core import __version__
from fhequant.errors import ArtifactError, ArtifactVersionError

__all__ = [
    "CLIENT_ZIP",
    "DEPLOYMENT_FORMAT_VERSION",
    "SERVER_ZIP",
    "check_document",
    "circuit_signature",
    "fingerprint",
    "read_zip",
    "versions",
    "write_zip",
]

CLIENT_ZIP = "client.zip"
SERVER_ZIP = "server.zip"
#: Version of the layout of client.zip / server.zip and their JSON documents.
DEPLOYMENT_FORMAT_VERSION = 1


def concrete_version() -> str:
    """The installed concrete-python version ("unknown" when it has no metadata)."""
    try:
        return metadata.version("concrete-python")
    except metadata.PackageNotFoundError:  # pragma: no cover - concrete is a dependency
        return "unknown"


def versions() -> dict[str, str]:
    """The versions recorded in every artifact."""
    return {"fhequant": str(__version__), "concrete-python": concrete_version()}


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def check_document(doc: Any, kind: str, where: str) -> dict[str, Any]:
    """Check an artifact's JSON document: its kind, format version and concrete version.

    Args:
        doc: the parsed JSON.
        kind: the expected ``format`` value (e.g. "fhequant-deployment-client").
        where: the file, for messages.

    Returns:
        The document.

    Raises:
        ArtifactError: not an object, or another kind of document.
        ArtifactVersionError: another format version, or compiled by another concrete-python
            major.minor version than the one installed.
    """
    if not isinstance(doc, dict) or doc.get("format") != kind:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ArtifactError(f"{where}: expected a {kind!r} document, found {found!r}")
    version = doc.get("format_version")
    if version != DEPLOYMENT_FORMAT_VERSION:
        raise ArtifactVersionError(
            f"{where}: deployment format version {version!r}, this fhequant reads version "
            f"{DEPLOYMENT_FORMAT_VERSION}; save the model again with this fhequant "
            "(FHEModelDev(...).save())"
        )
    written = doc.get("versions")
    if not isinstance(written, dict):
        raise ArtifactError(f"{where}: the document has no 'versions' object")
    theirs, ours = str(written.get("concrete-python")), concrete_version()
    if _major_minor(theirs) != _major_minor(ours):
        raise ArtifactVersionError(
            f"{where}: compiled with concrete-python {theirs}, this environment has {ours}; "
            "the compiled circuit and the keys need the same concrete-python major.minor "
            "version on the developer, client and server sides"
        )
    return doc


def read_zip(path: Path, members: tuple[str, ...]) -> dict[str, bytes]:
    """Read named members of an artifact zip (nothing is extracted to disk).

    Args:
        path: the zip file.
        members: the member names that must be present.

    Returns:
        name -> bytes.

    Raises:
        ArtifactError: a missing or unreadable file, or a missing member.
    """
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; FHEModelDev(path_dir, model).save() writes it")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [m for m in members if m not in names]
            if missing:
                raise ArtifactError(
                    f"{path}: missing {missing}; the file is not an fhequant artifact or is "
                    "damaged, save the model again"
                )
            return {m: archive.read(m) for m in members}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(
            f"{path}: not a readable zip file ({exc}); save the model again"
        ) from exc


def write_zip(path: Path, members: Mapping[str, bytes]) -> None:
    """Write an artifact zip atomically (a temporary file renamed over ``path``).

    Args:
        path: the zip file to write.
        members: name -> bytes.
    """
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    tmp.replace(path)


def load_json(data: bytes, where: str) -> Any:
    """Parse an artifact's JSON document.

    Raises:
        ArtifactError: not UTF-8 JSON.
    """
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{where}: not valid JSON ({exc}); save the model again") from exc


def dump_json(doc: Any) -> bytes:
    """An artifact's JSON document as bytes."""
    return json.dumps(doc, indent=1, allow_nan=False).encode("utf-8")


def fingerprint(client_specs: bytes) -> str:
    """The sha256 of the circuit's client specs: the identity of a compiled circuit (keys
    and ciphertexts made for one circuit do not fit another)."""
    return hashlib.sha256(client_specs).hexdigest()


def _shape_and_width(type_info: Any) -> dict[str, Any]:
    if isinstance(type_info, dict) and "lweCiphertext" in type_info:
        lwe = type_info["lweCiphertext"]
        encoding = lwe.get("encoding", {}).get("integer", {})
        return {
            "encrypted": True,
            "shape": list(lwe.get("abstractShape", {}).get("dimensions", [])),
            "bit_width": encoding.get("width"),
            "is_signed": encoding.get("isSigned"),
        }
    if isinstance(type_info, dict) and "plaintext" in type_info:
        plain = type_info["plaintext"]
        return {
            "encrypted": False,
            "shape": list(plain.get("shape", {}).get("dimensions", [])),
            "bit_width": plain.get("integerPrecision"),
            "is_signed": plain.get("isSigned"),
        }
    return {"encrypted": None, "shape": None, "bit_width": None, "is_signed": None}


def circuit_signature(client_specs: bytes) -> dict[str, list[dict[str, Any]]]:
    """The circuit's inputs and outputs (per-call shape, bit width, encrypted or clear), read
    from concrete's client specs (JSON).

    Args:
        client_specs: ``ClientSpecs.serialize()``.

    Returns:
        ``{"inputs": [...], "outputs": [...]}``, each entry a dict with ``shape`` (the shape
        of one call, i.e. of one row with its batch axis of 1), ``bit_width``, ``is_signed``
        and ``encrypted``.

    Raises:
        ArtifactError: specs that are not concrete's JSON or hold no circuit.
    """
    doc = load_json(client_specs, "client specs")
    circuits = doc.get("circuits") if isinstance(doc, dict) else None
    if not isinstance(circuits, list) or len(circuits) != 1:
        raise ArtifactError("client specs: expected concrete's program info with one circuit")
    circuit = circuits[0]
    return {
        side: [_shape_and_width(v.get("typeInfo")) for v in circuit.get(side, [])]
        for side in ("inputs", "outputs")
    }
