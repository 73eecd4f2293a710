"""``compile_brevitas_qat_model``: import a Brevitas QAT model and compile it
(docs/contract.md §6.1).

The model is exported to QONNX with Brevitas' own exporter (TorchScript based, opset 14); its
``Quant`` nodes (domain ``qonnx.custom_op.general`` or the reference's ``onnx.brevitas``) are
imported with ``import_qat=True`` by :func:`fhequant.torch.compile.compile_onnx_model`.
Brevitas is an optional dependency (``pip install 'fhequant[qat]'``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from fhequant.errors import ConfigurationError, MissingDependencyError
from fhequant.quantized.module import QuantizedModule
from fhequant.torch.compile import _float_inputs, compile_onnx_model
from fhequant.torch.qat_checks import warn_unquantized_entries

__all__ = ["brevitas_layer_names", "compile_brevitas_qat_model", "export_brevitas_qonnx"]

_OPSET = 14
_INSTALL_HINT = "pip install 'fhequant[qat]'"


def _import_brevitas_export() -> Any:
    """brevitas.export.export_qonnx, or MissingDependencyError with the install hint."""
    try:
        from brevitas.export import export_qonnx
    except ImportError as exc:
        raise MissingDependencyError(
            "compile_brevitas_qat_model needs brevitas (and onnxoptimizer) to export the QAT "
            f"model to QONNX: {_INSTALL_HINT}"
        ) from exc
    return export_qonnx


def brevitas_layer_names(torch_model: Any) -> list[str]:
    """The sorted class names of the Brevitas modules inside a torch model.

    Args:
        torch_model: a torch.nn.Module.

    Returns:
        The names (empty when the model has no Brevitas layer).
    """
    modules = getattr(torch_model, "modules", None)
    if modules is None:
        return []
    return sorted(
        {type(m).__name__ for m in modules() if type(m).__module__.split(".")[0] == "brevitas"}
    )


def _resolve_qat_n_bits(n_bits: Any) -> Any:
    """docs/contract.md §6.1: None → 8; int k → k; dict {model_inputs, model_outputs} →
    op_* = inputs."""
    if n_bits is None:
        return 8
    if isinstance(n_bits, dict):
        keys = set(n_bits)
        if keys != {"model_inputs", "model_outputs"}:
            raise ConfigurationError(
                "compile_brevitas_qat_model: an n_bits dict must have exactly the keys "
                f"'model_inputs' and 'model_outputs' (the other bit widths come from the "
                f"Brevitas layers), got {sorted(keys)}"
            )
        return {
            "model_inputs": n_bits["model_inputs"],
            "op_weights": n_bits["model_inputs"],
            "op_inputs": n_bits["model_inputs"],
            "model_outputs": n_bits["model_outputs"],
        }
    return n_bits


def _strip_initializer_inputs(model: onnx.ModelProto) -> None:
    """Drop graph inputs that are initializers (older exporters list the weights there)."""
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)


def export_brevitas_qonnx(
    torch_model: Any, dummy_inputs: Sequence[np.ndarray], output_onnx_file: str | None = None
) -> onnx.ModelProto:
    """Export a Brevitas model to QONNX (opset 14, TorchScript exporter).

    Args:
        torch_model: the Brevitas torch.nn.Module.
        dummy_inputs: one float array per model input (batch 1 is enough).
        output_onnx_file: also save the exported model there (None: a temporary file).

    Returns:
        The exported model, initializers removed from its graph inputs.
    """
    export_qonnx = _import_brevitas_export()
    import torch

    dummies = tuple(
        torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32)) for d in dummy_inputs
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = output_onnx_file or os.path.join(tmp, "qat_model.onnx")
        was_training = bool(getattr(torch_model, "training", False))
        torch_model.eval()
        try:
            export_qonnx(
                torch_model,
                dummies[0] if len(dummies) == 1 else dummies,
                export_path=path,
                opset_version=_OPSET,
                dynamo=False,
            )
        finally:
            torch_model.train(was_training)
        model = onnx.load(path)
    _strip_initializer_inputs(model)
    warn_unquantized_entries(model)
    if output_onnx_file is not None:
        onnx.save(model, output_onnx_file)
    return model


def compile_brevitas_qat_model(
    torch_model: Any,
    torch_inputset: Any,
    n_bits: Any = None,
    configuration: Any = None,
    artifacts: Any = None,
    show_mlir: bool = False,
    rounding_threshold_bits: Any = None,
    p_error: float | None = None,
    global_p_error: float | None = None,
    output_onnx_file: str | None = None,
    verbose: bool = False,
    inputs_encryption_status: Sequence[str] | None = None,
    reduce_sum_copy: bool = False,
    device: str = "cpu",
    accumulator_bounds: str = "observed",
) -> QuantizedModule:
    """Import a Brevitas quantization-aware-trained model and compile it to FHE.

    Args:
        torch_model: a torch.nn.Module built with Brevitas layers (QuantLinear, QuantConv2d,
            QuantIdentity, QuantReLU, ...).
        torch_inputset: calibration data: a tensor/array or a tuple of them (one per input).
        n_bits: None (8 everywhere), an int, or {"model_inputs": a, "model_outputs": b}
            (op_weights = op_inputs = a); the Brevitas layers fix their own bit widths.
        configuration: a concrete.fhe.Configuration (without p_error/global_p_error).
        artifacts: a concrete.fhe.DebugArtifacts.
        show_mlir: print the MLIR.
        rounding_threshold_bits: None, an int or {"n_bits": k, "method": ...}; None lets the
            power-of-two pass (docs/contract.md §4.7) round where the scales allow a shift.
        p_error: per-TLU error probability (neither given: 2**-40).
        global_p_error: circuit error probability.
        output_onnx_file: save the exported QONNX model there.
        verbose: print concrete's compilation steps.
        inputs_encryption_status: "encrypted"/"clear" per input (None: all encrypted).
        reduce_sum_copy: make ReduceSum copy its input first.
        device: "cpu".
        accumulator_bounds: "observed" or "worst_case".

    Returns:
        The compiled QuantizedModule.

    Raises:
        ValueError: the model has no Brevitas layer, or a bad n_bits dict.
        MissingDependencyError: brevitas is not installed (an ImportError).
    """
    if not brevitas_layer_names(torch_model):
        raise ConfigurationError(
            f"compile_brevitas_qat_model: {type(torch_model).__name__} has no Brevitas layer; "
            "use compile_torch_model for float models (or import_qat=True for a model that "
            "fake-quantizes itself)"
        )
    bits = _resolve_qat_n_bits(n_bits)
    inputs = _float_inputs(torch_inputset)
    onnx_model = export_brevitas_qonnx(
        torch_model, [x[:1] for x in inputs], output_onnx_file=output_onnx_file
    )
    return compile_onnx_model(
        onnx_model,
        inputs if len(inputs) > 1 else inputs[0],
        import_qat=True,
        configuration=configuration,
        artifacts=artifacts,
        show_mlir=show_mlir,
        n_bits=bits,
        rounding_threshold_bits=rounding_threshold_bits,
        p_error=p_error,
        global_p_error=global_p_error,
        verbose=verbose,
        inputs_encryption_status=inputs_encryption_status,
        reduce_sum_copy=reduce_sum_copy,
        device=device,
        accumulator_bounds=accumulator_bounds,
    )
