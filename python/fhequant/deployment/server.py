"""The model owner's side: ``FHEModelServer`` runs the compiled circuit on ciphertexts with
the client's evaluation keys (it never sees a secret key)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fhequant._concrete import fhe_module, preserve_exit_status
from fhequant.deployment.artifacts import SERVER_ZIP, check_document, load_json, read_zip
from fhequant.deployment.dev import SERVER_DOC, SERVER_MEMBERS
from fhequant.deployment.wire import pack_rows, unpack_rows
from fhequant.errors import ArtifactError, CiphertextError, EvaluationKeyError, NotCompiledError

__all__ = ["FHEModelServer", "load_evaluation_keys"]


def load_evaluation_keys(serialized: bytes | Path) -> Any:
    """Deserialize evaluation keys (bytes, or a file holding them).

    Args:
        serialized: ``FHEModelClient.get_serialized_evaluation_keys()`` or its file.

    Returns:
        concrete's ``EvaluationKeys``.

    Raises:
        EvaluationKeyError: bytes that are not evaluation keys (malformed or truncated).
    """
    fhe = fhe_module()
    data = serialized.read_bytes() if isinstance(serialized, Path) else bytes(serialized)
    try:
        return fhe.EvaluationKeys.deserialize(data)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvaluationKeyError(
            f"the evaluation keys cannot be read ({len(data)} bytes; {first[:200]}); send "
            "the bytes of FHEModelClient.get_serialized_evaluation_keys() unchanged"
        ) from exc


class FHEModelServer:
    """Run a model saved by :class:`FHEModelDev` on encrypted data.

    Args:
        path_dir: the directory holding ``server.zip``.
    """

    def __init__(self, path_dir: str | Path) -> None:
        self.path_dir = Path(path_dir)
        self.server: Any = None
        self.metadata: dict[str, Any] = {}

    def load(self) -> FHEModelServer:
        """Read ``server.zip`` and load the compiled circuit (no recompilation).

        Returns:
            self.

        Raises:
            ArtifactError: a missing or damaged file.
            ArtifactVersionError: written by another format or concrete-python version.
        """
        path = self.path_dir / SERVER_ZIP
        members = read_zip(path, SERVER_MEMBERS)
        doc = check_document(load_json(members["server.json"], str(path)), SERVER_DOC, str(path))
        fhe = fhe_module()
        with tempfile.TemporaryDirectory(prefix="fhequant-server-") as tmp:
            circuit_zip = Path(tmp) / "circuit.zip"
            circuit_zip.write_bytes(members["circuit.zip"])
            try:
                self.server = fhe.Server.load(circuit_zip)
            except Exception as exc:
                raise ArtifactError(
                    f"{path}: concrete cannot load the compiled circuit ({exc})"
                ) from exc
        self.metadata = doc
        return self

    @property
    def n_inputs(self) -> int:
        """The number of circuit arguments (values per row)."""
        return len(self.metadata.get("inputs") or [])

    def run(
        self, serialized_encrypted_quantized_data: bytes, serialized_evaluation_keys: Any
    ) -> bytes:
        """Run the circuit on every row of a batch, in order.

        Args:
            serialized_encrypted_quantized_data: ``FHEModelClient.quantize_encrypt_serialize``.
            serialized_evaluation_keys: ``FHEModelClient.get_serialized_evaluation_keys()``
                (or keys already loaded with :func:`load_evaluation_keys`).

        Returns:
            The serialized encrypted results, one per row, in order.

        Raises:
            NotCompiledError: ``load()`` was not called.
            CiphertextError: malformed, truncated or foreign ciphertexts, wrong counts.
            EvaluationKeyError: keys that cannot be read.
        """
        if self.server is None:
            raise NotCompiledError("FHEModelServer.run: call load() first")
        fhe = fhe_module()
        rows = unpack_rows(serialized_encrypted_quantized_data, self.n_inputs or None)
        keys = serialized_evaluation_keys
        if isinstance(keys, bytes | bytearray | memoryview | Path):
            keys = load_evaluation_keys(keys if isinstance(keys, Path) else bytes(keys))
        preserve_exit_status()
        results = []
        for index, row in enumerate(rows):
            try:
                values = [fhe.Value.deserialize(b) for b in row]
            except Exception as exc:
                raise CiphertextError(
                    f"row {index}: the ciphertexts cannot be read (malformed or truncated); "
                    "send the bytes of quantize_encrypt_serialize unchanged"
                ) from exc
            try:
                out = self.server.run(*values, evaluation_keys=keys)
            except Exception as exc:
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise CiphertextError(
                    f"row {index}: the ciphertexts do not fit this model's inputs "
                    f"({text[:200]}); encrypt with the client.zip of this model"
                ) from exc
            out = out if isinstance(out, tuple) else (out,)
            results.append([bytes(v.serialize()) for v in out])
        return pack_rows(results)
