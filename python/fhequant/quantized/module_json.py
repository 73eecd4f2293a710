"""Validation of a QuantizedModule document on load (docs/contract.md §1.6): field types and
counts first, then one run on a zero row, so a damaged document raises SerializationError at
load instead of an untyped error on first use."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from fhequant import serialization
from fhequant.errors import SerializationError
from fhequant.quantization import UniformQuantizer

__all__ = ["check_loaded_module", "checked_module_fields"]


def _is_model(value: Any) -> bool:
    return type(value).__name__ == "ModelProto"


def _names(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(n, str) for n in value)


def _quantizers(value: Any) -> bool:
    return isinstance(value, list) and all(
        q is None or isinstance(q, UniformQuantizer) for q in value
    )


def checked_module_fields(owner: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """The module fields of ``metadata`` after type checks.

    Returns:
        input_names, output_names, layers (name -> (input names, op)), onnx_model,
        onnx_preprocessing, input_quantizers, output_quantizers, post_processing_params.

    Raises:
        SerializationError: naming the field at fault.
    """
    from fhequant.quantized.ops.base import QuantizedOp  # the ops are registered later

    def layer(entry: Any) -> bool:
        return (
            isinstance(entry, (tuple, list))
            and len(entry) == 2
            and isinstance(entry[0], (tuple, list))
            and all(isinstance(n, str) for n in entry[0])
            and isinstance(entry[1], QuantizedOp)
        )

    field = serialization.field
    inputs = field(metadata, "ordered_module_input_names", owner, _names, "a tuple of names")
    outputs = field(metadata, "ordered_module_output_names", owner, _names, "a tuple of names")
    raw_layers = field(
        metadata, "quant_layers_dict", owner,
        lambda d: isinstance(d, dict) and all(layer(e) for e in d.values()),
        "an object of name: [input names, quantized op]",
    )  # fmt: skip
    out = {
        "input_names": inputs,
        "output_names": outputs,
        "layers": {name: (tuple(e[0]), e[1]) for name, e in raw_layers.items()},
        "onnx_model": field(
            metadata, "_onnx_model", owner, _is_model, "an ONNX model", nullable=True
        ),
        "onnx_preprocessing": field(
            metadata, "onnx_preprocessing", owner, _is_model, "an ONNX model", nullable=True
        ),
        "input_quantizers": field(
            metadata, "input_quantizers", owner, _quantizers, "a list of quantizers"
        ),
        "output_quantizers": field(
            metadata, "output_quantizers", owner, _quantizers, "a list of quantizers"
        ),
        "post_processing_params": field(
            metadata,
            "_post_processing_params",
            owner,
            lambda v: isinstance(v, dict),
            "an object",
            optional=True,
        ),
    }
    for key, names in (("input_quantizers", inputs), ("output_quantizers", outputs)):
        if len(out[key]) != len(names):
            raise SerializationError(
                f"{owner}: the field {key!r} has {len(out[key])} entries for {len(names)} names"
            )
    return out


def _probe_inputs(module: Any) -> list[np.ndarray] | None:
    """One zero row per graph input, shaped from the ONNX model (None without one, or with
    pre-processing, whose raw inputs differ)."""
    model = module.onnx_model
    if model is None or module.onnx_preprocessing is not None:
        return None
    initializers = {t.name for t in model.graph.initializer}
    by_name = {i.name: i for i in model.graph.input if i.name not in initializers}
    probes = []
    for name in module.ordered_module_input_names:
        info = by_name.get(name)
        if info is None:
            return None
        dims = info.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
        shape = [1, *shape[1:]] if shape else shape
        if int(np.prod(shape)) > 1 << 20:
            return None
        probes.append(np.zeros(shape, dtype=np.float32))
    return probes


def check_loaded_module(module: Any) -> None:
    """Run a loaded module once on a zero row; any exception becomes a SerializationError."""
    probes = _probe_inputs(module)
    if probes is None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module.forward(*probes)
    except Exception as exc:
        raise SerializationError(
            f"QuantizedModule: the loaded module does not run ({type(exc).__name__}: {exc}); "
            "the document is damaged"
        ) from exc
