"""Export a torch module to ONNX (docs/contract.md §5.1), with either of torch's exporters.

This is the ONNX import layer's torch entry (``NumpyModule.from_torch``); torch itself is
imported lazily. The front door re-exports it as ``fhequant.torch.export_to_onnx``.

``exporter="legacy"`` (the default) is the reference's export: opset 14, the TorchScript
exporter (``dynamo=False``; its DeprecationWarning on torch >= 2.9 is silenced), and a dummy
input made of the first sample of each input with batch 1 (``x[[0], ...]``). It needs nothing
beyond torch and gives the graphs the golden numbers were calibrated on.

``exporter="dynamo"`` is torch's default exporter (``torch.export`` + onnxscript, which must be
installed: ``pip install fhequant[torch]``), at its own default opset (fhequant converts opsets
1 to the newest onnx defines). torch.export specialises a dimension of size 1, so its dummy
input has batch 2 (the first two samples, or the first one twice).

Both take input names from the ``forward`` signature, floating-point data as float32, and
export axis 0 of every input as a dynamic ``batch`` axis, so ``x.view(x.size(0), -1)`` keeps
working for batches of any size (the pre-processing folds the legacy exporter's shape
arithmetic into ``Reshape(x, [0, -1])``).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import warnings
from typing import Any, Literal

import numpy as np
import onnx

from fhequant.errors import (
    ConfigurationError,
    GraphInputError,
    MissingDependencyError,
    OnnxImportError,
)

EXPORT_OPSET = 14
EXPORTERS = ("legacy", "dynamo")
Exporter = Literal["legacy", "dynamo"]

__all__ = ["EXPORTERS", "EXPORT_OPSET", "export_to_onnx", "input_names_of"]


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


def _first_sample(x: Any, n: int = 1) -> Any:
    """x[[0], ...] (n = 1) or x[[0, 1], ...] (n = 2; x[[0, 0], ...] for a single sample) as a
    CPU torch tensor; floating point data as float32."""
    torch = _torch()
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise GraphInputError(
            f"an input of the inputset has shape {arr.shape}: it needs a batch axis with at "
            "least one sample"
        )
    sample = arr[[0], ...] if n == 1 else arr[[0, min(1, arr.shape[0] - 1)], ...]
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


def _onnxscript_check() -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "exporter='dynamo' (torch's default ONNX exporter) needs onnxscript: "
            "pip install 'fhequant[torch]' (or onnxscript), or use exporter='legacy'"
        ) from exc


def _export_legacy(model: Any, dummy: tuple[Any, ...], names: list[str]) -> onnx.ModelProto:
    torch = _torch()
    buffer = io.BytesIO()
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
    return onnx.load_model_from_string(buffer.getvalue())


def _export_dynamo(model: Any, dummy: tuple[Any, ...], names: list[str]) -> onnx.ModelProto:
    torch = _torch()
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            dummy,
            dynamo=True,
            verbose=False,
            input_names=names,
            dynamic_shapes=tuple({0: batch} for _ in dummy),
        )
    if program is None:  # pragma: no cover - torch returns the program when no file is given
        raise OnnxImportError("torch.onnx.export(dynamo=True) returned no ONNX program")
    proto: onnx.ModelProto = program.model_proto
    return proto


def export_to_onnx(model: Any, inputset: Any, exporter: Exporter = "legacy") -> onnx.ModelProto:
    """Export ``model`` to ONNX with a dynamic batch axis (see the module docstring).

    Args:
        model: a ``torch.nn.Module``.
        inputset: one array/tensor (batch on axis 0), or a tuple/list of them for a model
            with several inputs. Only the first sample (dynamo: two samples) of each is used.
        exporter: "legacy" (TorchScript, opset 14, the reference's graphs; the default) or
            "dynamo" (torch's default exporter; needs onnxscript).

    Returns:
        The exported ``onnx.ModelProto``.

    Raises:
        GraphInputError: an input of ``forward`` missing from the exported graph, or an
            inputset that does not fit the signature.
        OnnxImportError: the exporter failed.
        MissingDependencyError: exporter="dynamo" without onnxscript installed.
        ConfigurationError: an unknown exporter.
    """
    if exporter not in EXPORTERS:
        raise ConfigurationError(
            f"exporter={exporter!r} is not one of {list(EXPORTERS)}: 'legacy' (TorchScript, "
            "opset 14) or 'dynamo' (torch's default exporter, needs onnxscript)"
        )
    _torch()
    if exporter == "dynamo":
        _onnxscript_check()
    inputs = _as_inputs(inputset)
    dummy = tuple(_first_sample(x, 2 if exporter == "dynamo" else 1) for x in inputs)
    names = input_names_of(model, len(dummy))
    export = _export_dynamo if exporter == "dynamo" else _export_legacy
    try:
        proto = export(model, dummy, names)
    except Exception as exc:
        raise OnnxImportError(
            f"torch.onnx.export ({exporter} exporter) failed on {type(model).__name__}: {exc}"
        ) from exc
    exported = {v.name for v in proto.graph.input}
    missing = [n for n in names if n not in exported]
    if missing:
        raise GraphInputError(
            f"input(s) {missing} of {type(model).__name__}.forward are not in the exported "
            "graph (unused by the computation?): remove them from forward or use them"
        )
    return proto
