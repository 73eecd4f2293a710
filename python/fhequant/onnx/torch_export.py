"""Export a torch module to ONNX the way the reference does (docs/contract.md §5.1).

This is the ONNX import layer's torch entry (``NumpyModule.from_torch``); torch itself is
imported lazily. The front door re-exports it as ``fhequant.torch.export_to_onnx``.

Opset 14, the legacy TorchScript exporter (``dynamo=False``), input names taken from the
``forward`` signature, and a dummy input made of the first sample of each input with batch 1
(``x[[0], ...]``), floating-point data as float32. Unlike the reference, axis 0 of every input
is exported as a dynamic ``batch`` axis, so ``x.view(x.size(0), -1)`` keeps working for
batches of any size (the pre-processing folds that shape arithmetic into ``Reshape(x, [0,
-1])``).
"""

from __future__ import annotations

import inspect
import io
import warnings
from typing import Any

import numpy as np
import onnx

from fhequant.errors import GraphInputError, MissingDependencyError, OnnxImportError

EXPORT_OPSET = 14

__all__ = ["EXPORT_OPSET", "export_to_onnx", "input_names_of"]


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is installed in every test setup
        raise MissingDependencyError(
            "exporting a torch model needs torch: pip install torch"
        ) from exc
    return torch


def _as_inputs(inputset: Any) -> tuple[Any, ...]:
    """One input or a tuple/list of inputs."""
    return tuple(inputset) if isinstance(inputset, (tuple, list)) else (inputset,)


def _first_sample(x: Any) -> Any:
    """x[[0], ...] as a CPU torch tensor; floating point data as float32."""
    torch = _torch()
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise GraphInputError(
            f"an input of the inputset has shape {arr.shape}: it needs a batch axis with at "
            "least one sample"
        )
    sample = arr[[0], ...]
    if sample.dtype.kind == "f":
        sample = sample.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(sample))


def input_names_of(model: Any, n_inputs: int) -> list[str]:
    """The names of the first ``n_inputs`` positional parameters of ``model.forward``.

    Raises:
        GraphInputError: forward takes fewer positional parameters than inputs are given.
    """
    params = [
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) < n_inputs:
        raise GraphInputError(
            f"{n_inputs} inputs given but {type(model).__name__}.forward takes "
            f"{len(params)} positional parameters {params}"
        )
    return params[:n_inputs]


def export_to_onnx(model: Any, inputset: Any) -> onnx.ModelProto:
    """Export ``model`` to an opset-14 ONNX model with the reference's conventions.

    Args:
        model: a ``torch.nn.Module``.
        inputset: one array/tensor (batch on axis 0), or a tuple/list of them for a model
            with several inputs. Only the first sample of each is used.

    Returns:
        The exported ``onnx.ModelProto``.

    Raises:
        GraphInputError: an input of ``forward`` missing from the exported graph, or an
            inputset that does not fit the signature.
        OnnxImportError: the exporter failed.
    """
    torch = _torch()
    inputs = _as_inputs(inputset)
    dummy = tuple(_first_sample(x) for x in inputs)
    names = input_names_of(model, len(dummy))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                dummy,
                buffer,
                opset_version=EXPORT_OPSET,
                dynamo=False,
                input_names=names,
                dynamic_axes={name: {0: "batch"} for name in names},
            )
    except Exception as exc:
        raise OnnxImportError(f"torch.onnx.export failed on {type(model).__name__}: {exc}") from exc
    proto = onnx.load_model_from_string(buffer.getvalue())
    exported = {v.name for v in proto.graph.input}
    missing = [n for n in names if n not in exported]
    if missing:
        raise GraphInputError(
            f"input(s) {missing} of {type(model).__name__}.forward are not in the exported "
            "graph (unused by the computation?): remove them from forward or use them"
        )
    return proto
