"""The developer side: ``FHEModelDev`` writes ``client.zip`` and ``server.zip`` from a compiled
module (Concrete ML's names and behaviour)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fhequant import serialization
from fhequant._concrete import fhe_module
from fhequant.deployment.artifacts import (
    CLIENT_ZIP,
    DEPLOYMENT_FORMAT_VERSION,
    SERVER_ZIP,
    circuit_signature,
    dump_json,
    fingerprint,
    versions,
    write_zip,
)
from fhequant.errors import ArtifactError, NotCompiledError

__all__ = ["CLIENT_DOC", "SERVER_DOC", "FHEModelDev"]

#: ``format`` of the JSON document in client.zip (processing.json).
CLIENT_DOC = "fhequant-deployment-client"
#: ``format`` of the JSON document in server.zip (server.json).
SERVER_DOC = "fhequant-deployment-server"
#: The members of the two archives.
CLIENT_MEMBERS = ("processing.json", "client.specs.json")
SERVER_MEMBERS = ("server.json", "circuit.zip")


def _number(fn: Any) -> Any:
    """A circuit statistic as a JSON number, None when this concrete cannot give it."""
    try:
        value = fn()
    except Exception:  # statistics are informative only
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
    return value


def cost_figures(circuit: Any) -> dict[str, Any]:
    """What the compiled circuit costs (from concrete's statistics), for the server's /info."""
    return {
        "max_bit_width": _number(lambda: int(circuit.graph.maximum_integer_bit_width())),
        "programmable_bootstrap_count": _number(lambda: int(circuit.programmable_bootstrap_count)),
        "key_switch_count": _number(lambda: int(circuit.key_switch_count)),
        "packing_key_switch_count": _number(lambda: int(circuit.packing_key_switch_count)),
        "complexity": _number(lambda: float(circuit.complexity)),
        "size_of_bootstrap_keys": _number(lambda: int(circuit.size_of_bootstrap_keys)),
        "size_of_keyswitch_keys": _number(lambda: int(circuit.size_of_keyswitch_keys)),
        "size_of_inputs": _number(lambda: int(circuit.size_of_inputs)),
        "size_of_outputs": _number(lambda: int(circuit.size_of_outputs)),
        "p_error": _number(lambda: float(circuit.p_error)),
        "global_p_error": _number(lambda: float(circuit.global_p_error)),
    }


class FHEModelDev:
    """Save a compiled model as the artifacts of a client / server deployment.

    ``client.zip`` holds what the data owner needs to quantize, encrypt, decrypt and
    dequantize: concrete's client specs, the input and output quantizers, the pre- and
    post-processing metadata and the versions; no weights. ``server.zip`` holds the compiled
    circuit (concrete's server artifact, which embeds the integer weights) and the model's
    description (shapes, bit widths, cost figures, versions); no key of any kind.

    Args:
        path_dir: the directory to write the two files to (created if needed).
        model: a compiled QuantizedModule (``module.compile(x)``, ``compile_torch_model``).
    """

    def __init__(self, path_dir: str | Path, model: Any = None) -> None:
        self.path_dir = Path(path_dir)
        self.model = model

    def _circuit(self) -> Any:
        circuit = getattr(self.model, "fhe_circuit", None)
        if circuit is None:
            raise NotCompiledError(
                "FHEModelDev needs a compiled model: call model.compile(x) (or use "
                "compile_torch_model) before saving"
            )
        if not hasattr(circuit, "server"):
            raise ArtifactError(
                "the model's circuit was loaded from a deployment artifact; save the "
                "original compiled model instead"
            )
        return circuit

    def save(self, mode: str = "inference", via_mlir: bool = False) -> None:
        """Write ``client.zip`` and ``server.zip`` to ``path_dir``.

        Args:
            mode: only "inference" (Concrete ML's argument).
            via_mlir: not supported: concrete's MLIR export stores its configuration with
                jsonpickle; fhequant ships the compiled library instead.

        Raises:
            NotCompiledError: the model is not compiled.
            ArtifactError: the files exist already, or an unsupported mode.
        """
        if mode != "inference" or via_mlir:
            raise ArtifactError(
                "FHEModelDev.save supports mode='inference' with via_mlir=False only"
            )
        circuit = self._circuit()
        self.path_dir.mkdir(parents=True, exist_ok=True)
        client_path, server_path = self.path_dir / CLIENT_ZIP, self.path_dir / SERVER_ZIP
        existing = [str(p) for p in (client_path, server_path) if p.exists()]
        if existing:
            raise ArtifactError(
                f"{existing} already exist; save to an empty directory (the artifacts of a "
                "model and the keys made for it belong together)"
            )
        specs = bytes(circuit.client.specs.serialize())
        signature = circuit_signature(specs)
        model = self.model
        common = {
            "format_version": DEPLOYMENT_FORMAT_VERSION,
            "versions": versions(),
            "fingerprint": fingerprint(specs),
            "input_names": list(model.ordered_module_input_names),
            "output_names": list(model.ordered_module_output_names),
            "inputs": signature["inputs"],
            "outputs": signature["outputs"],
        }
        processing = serialization.wrap_versioned(
            {
                "input_quantizers": list(model.input_quantizers),
                "output_quantizers": list(model.output_quantizers),
                "onnx_preprocessing": model.onnx_preprocessing,
                "post_processing_params": dict(model.post_processing_params or {}),
            }
        )
        client_doc = {"format": CLIENT_DOC, **common, "processing": processing}
        server_doc = {"format": SERVER_DOC, **common, "cost": cost_figures(circuit)}
        with tempfile.TemporaryDirectory(prefix="fhequant-dev-") as tmp:
            concrete_zip = Path(tmp) / "circuit.zip"
            fhe_module()  # loads concrete the fhequant way (exit status kept)
            circuit.server.save(concrete_zip, via_mlir=False)
            circuit_bytes = concrete_zip.read_bytes()
        write_zip(
            client_path,
            {"processing.json": dump_json(client_doc), "client.specs.json": specs},
        )
        write_zip(server_path, {"server.json": dump_json(server_doc), "circuit.zip": circuit_bytes})
