"""The data owner's side: ``FHEModelClient`` (keys, quantize + encrypt, decrypt + dequantize).

The secret key never leaves this object (and ``key_dir``, where it is persisted); what goes
to the server is ``get_serialized_evaluation_keys()`` and the ciphertexts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fhequant import serialization
from fhequant._concrete import fhe_module, preserve_exit_status
from fhequant.deployment.artifacts import CLIENT_ZIP, check_document, load_json, read_zip
from fhequant.deployment.dev import CLIENT_DOC, CLIENT_MEMBERS
from fhequant.deployment.wire import pack_rows, unpack_rows
from fhequant.errors import (
    ArtifactError,
    CiphertextError,
    DTypeError,
    FhequantError,
    GraphInputError,
    NonFiniteError,
    ShapeError,
)

__all__ = ["FHEModelClient"]


class _Processing:
    """The quantizers and pre/post-processing of a deployed model (no weights)."""

    def __init__(self, doc: dict[str, Any], where: str) -> None:
        try:
            fields = serialization.decode(serialization.unwrap_versioned(doc.get("processing")))
        except FhequantError as exc:
            raise ArtifactError(f"{where}: the processing metadata cannot be read: {exc}") from exc
        if not isinstance(fields, dict):
            raise ArtifactError(f"{where}: the processing metadata is not an object")
        self.input_quantizers = list(fields.get("input_quantizers") or [])
        self.output_quantizers = list(fields.get("output_quantizers") or [])
        self.onnx_preprocessing = fields.get("onnx_preprocessing")
        self.post_processing_params = dict(fields.get("post_processing_params") or {})
        self._preprocess: Any = None

    def pre_processing(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        if self.onnx_preprocessing is None:
            return arrays
        if self._preprocess is None:
            from fhequant.onnx import NumpyModule

            self._preprocess = NumpyModule(self.onnx_preprocessing)
        out = self._preprocess.forward(*arrays, quant_semantics=False)
        return tuple(np.asarray(v) for v in (out if isinstance(out, tuple) else (out,)))


class FHEModelClient:
    """Keys, encryption and decryption for a model deployed with :class:`FHEModelDev`.

    Args:
        path_dir: the directory holding ``client.zip``.
        key_dir: where the keys are persisted (a file per model, named by the circuit's
            fingerprint); None keeps them in memory only.
    """

    def __init__(self, path_dir: str | Path, key_dir: str | Path | None = None) -> None:
        self.path_dir = Path(path_dir)
        self.key_dir = None if key_dir is None else Path(key_dir)
        self.client: Any = None
        self.load()

    def load(self) -> None:
        """Read ``client.zip`` (called by the constructor).

        Raises:
            ArtifactError: a missing or damaged file.
            ArtifactVersionError: written by another format or concrete-python version.
        """
        path = self.path_dir / CLIENT_ZIP
        members = read_zip(path, CLIENT_MEMBERS)
        doc = check_document(
            load_json(members["processing.json"], str(path)), CLIENT_DOC, str(path)
        )
        self.metadata = doc
        self.processing = _Processing(doc, str(path))
        self.input_names: list[str] = list(doc.get("input_names") or [])
        self.inputs: list[dict[str, Any]] = list(doc.get("inputs") or [])
        self.outputs: list[dict[str, Any]] = list(doc.get("outputs") or [])
        if not self.inputs or len(self.inputs) != len(self.input_names):
            raise ArtifactError(f"{path}: the inputs of the circuit are not described")
        fhe = fhe_module()
        try:
            specs = fhe.ClientSpecs.deserialize(members["client.specs.json"])
        except Exception as exc:
            raise ArtifactError(f"{path}: concrete cannot read the client specs ({exc})") from exc
        self.client = fhe.Client(specs)

    # --- keys ------------------------------------------------------------------------------

    @property
    def key_path(self) -> Path | None:
        """The file the keys are persisted to (None without ``key_dir``)."""
        if self.key_dir is None:
            return None
        return self.key_dir / f"fhequant-keys-{str(self.metadata['fingerprint'])[:24]}.bin"

    def generate_private_and_evaluation_keys(self, force: bool = False) -> None:
        """Generate the secret and evaluation keys, or load them from ``key_dir``.

        Args:
            force: generate new keys even if keys exist (in memory or in ``key_dir``).
        """
        preserve_exit_status()
        keys = self.client.keys
        path = self.key_path
        if not force and keys.are_generated:
            return
        if path is not None and path.exists() and not force:
            keys.load(path)
            return
        self.client.keygen(force=True)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            tmp.unlink(missing_ok=True)
            keys.save(tmp)
            tmp.chmod(0o600)
            tmp.replace(path)

    def get_serialized_evaluation_keys(self) -> bytes:
        """The evaluation keys (public; what the server needs), generating keys if needed."""
        self.generate_private_and_evaluation_keys(force=False)
        return bytes(self.client.evaluation_keys.serialize())

    # --- data ------------------------------------------------------------------------------

    def _check_inputs(self, x: tuple[Any, ...]) -> tuple[np.ndarray, ...]:
        if len(x) != len(self.input_names):
            raise GraphInputError(
                f"got {len(x)} input(s), the model takes {len(self.input_names)} "
                f"({self.input_names}); pass one array per input"
            )
        arrays = self.processing.pre_processing(tuple(np.asarray(v) for v in x))
        rows = {int(a.shape[0]) if a.ndim else -1 for a in arrays}
        for name, arr, spec in zip(self.input_names, arrays, self.inputs, strict=True):
            if arr.dtype.kind != "f":
                raise DTypeError(
                    f"input {name!r} has dtype {arr.dtype}; give float values (they are "
                    "quantized by the client)"
                )
            row_shape = tuple(spec["shape"][1:])
            if arr.ndim == 0 or tuple(arr.shape[1:]) != row_shape:
                raise ShapeError(
                    f"input {name!r} has shape {arr.shape}; the model takes rows of shape "
                    f"{row_shape} (an array of shape (n, {', '.join(map(str, row_shape))}))"
                )
            if arr.size and not np.all(np.isfinite(arr)):
                raise NonFiniteError(f"input {name!r} holds NaN or infinite values")
        if len(rows) != 1 or rows == {0}:
            raise ShapeError(f"the inputs have row counts {sorted(rows)}; give n >= 1 rows each")
        return arrays

    def quantize_encrypt_serialize(self, *x: Any) -> bytes:
        """Quantize, encrypt and serialize a batch of rows (one circuit call per row).

        Args:
            *x: one float array per model input, rows on axis 0.

        Returns:
            The serialized ciphertexts of every row, in order (for ``FHEModelServer.run``).
        """
        arrays = self._check_inputs(x)
        q = [
            v if qz is None else qz.quant(v, dtype=np.int64)
            for qz, v in zip(self.processing.input_quantizers, arrays, strict=True)
        ]
        self.generate_private_and_evaluation_keys(force=False)
        rows = []
        for i in range(int(arrays[0].shape[0])):
            encrypted = self.client.encrypt(*(np.asarray(v[i : i + 1], dtype=np.int64) for v in q))
            encrypted = encrypted if isinstance(encrypted, tuple) else (encrypted,)
            rows.append([bytes(v.serialize()) for v in encrypted])
        return pack_rows(rows)

    def deserialize_decrypt(self, serialized_encrypted_quantized_result: bytes) -> Any:
        """Decrypt the server's result into the output integers.

        Args:
            serialized_encrypted_quantized_result: the bytes ``FHEModelServer.run`` returned.

        Returns:
            One int64 array per output (rows on axis 0, in the order sent); a bare array for
            one output.

        Raises:
            CiphertextError: bytes that are not a result of this model.
        """
        fhe = fhe_module()
        rows = unpack_rows(
            serialized_encrypted_quantized_result, len(self.outputs) or None, "result"
        )
        self.generate_private_and_evaluation_keys(force=False)
        decrypted: list[tuple[np.ndarray, ...]] = []
        for index, row in enumerate(rows):
            try:
                values = [fhe.Value.deserialize(b) for b in row]
                out = self.client.decrypt(*values)
            except Exception as exc:
                raise CiphertextError(
                    f"result row {index}: cannot be decrypted with this model's client ({exc})"
                ) from exc
            out = out if isinstance(out, tuple) else (out,)
            decrypted.append(tuple(np.asarray(v, dtype=np.int64).reshape(1, -1) for v in out))
        outputs = tuple(
            np.concatenate([r[k] for r in decrypted], axis=0).reshape(
                (len(decrypted), *self._output_row_shape(k))
            )
            for k in range(len(decrypted[0]))
        )
        return outputs[0] if len(outputs) == 1 else outputs

    def _output_row_shape(self, k: int) -> tuple[int, ...]:
        if k < len(self.outputs) and self.outputs[k].get("shape"):
            return tuple(int(d) for d in self.outputs[k]["shape"][1:])
        return (-1,)

    def deserialize_decrypt_dequantize(self, serialized_encrypted_quantized_result: bytes) -> Any:
        """Decrypt and dequantize the server's result (and apply the post-processing).

        Args:
            serialized_encrypted_quantized_result: the bytes ``FHEModelServer.run`` returned.

        Returns:
            One float64 array per output (a bare array for one output).
        """
        q = self.deserialize_decrypt(serialized_encrypted_quantized_result)
        q = q if isinstance(q, tuple) else (q,)
        quantizers = self.processing.output_quantizers
        if len(quantizers) != len(q):
            raise ArtifactError(
                f"the client has {len(quantizers)} output quantizer(s) for {len(q)} output(s)"
            )
        out = tuple(qz.dequant(v) for qz, v in zip(quantizers, q, strict=True))
        return out[0] if len(out) == 1 else out
