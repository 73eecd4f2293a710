"""compile_torch_model and compile_onnx_model: quantize, then compile to FHE
(docs/contract.md §6.1).

Both build the QuantizedModule with ``build_quantized_module`` and compile it with
``QuantizedModule.compile`` over the same inputset (the calibration data).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from fhequant.distributed._dask import DaskData, is_dask
from fhequant.errors import ConfigurationError
from fhequant.onnx import NumpyModule
from fhequant.quantized.build import build_quantized_module
from fhequant.quantized.module import QuantizedModule
from fhequant.quantized.streaming import as_numpy

__all__ = ["compile_onnx_model", "compile_torch_model"]


def _float_inputs(inputset: Any) -> tuple[np.ndarray, ...]:
    if isinstance(inputset, DaskData):
        inputset = inputset.data
    items = tuple(inputset) if isinstance(inputset, tuple | list) else (inputset,)
    # Dask data (calibrated on the cluster) is computed here: the compiler measures its bounds
    items = tuple(v.compute() if is_dask(v) else v for v in items)
    return tuple(as_numpy(v, "torch_inputset") for v in items)


def _check_device(device: str) -> None:
    if device != "cpu":
        raise ConfigurationError(f"device={device!r} is not supported; fhequant compiles for 'cpu'")


def _compile(
    model: Any,
    torch_inputset: Any,
    import_qat: bool,
    configuration: Any,
    artifacts: Any,
    show_mlir: bool,
    n_bits: Any,
    rounding_threshold_bits: Any,
    p_error: float | None,
    global_p_error: float | None,
    verbose: bool,
    inputs_encryption_status: Sequence[str] | None,
    reduce_sum_copy: bool,
    accumulator_bounds: str,
    calibration: Any = None,
) -> QuantizedModule:
    auto = [
        name
        for name, value in (
            ("n_bits", n_bits),
            ("rounding_threshold_bits", rounding_threshold_bits),
            ("p_error", p_error),
        )
        if isinstance(value, str) and value == "auto"
    ]
    if auto:
        if import_qat:
            raise ConfigurationError(
                f"{', '.join(auto)}='auto' cannot be searched with import_qat=True: a QAT "
                "model brings its own bit widths; drop 'auto' or import_qat"
            )
        from fhequant.fhe.tune import tune

        # every option reaches the search (its builds) and its compiles
        result = tune(
            model,
            _float_inputs(torch_inputset),
            n_bits=n_bits,
            rounding_threshold_bits=rounding_threshold_bits,
            p_error=p_error,
            accumulator_bounds=accumulator_bounds,
            progress=verbose,
            calibration=calibration,
            reduce_sum_copy=reduce_sum_copy,
            configuration=configuration,
            artifacts=artifacts,
            show_mlir=show_mlir,
            global_p_error=global_p_error,
            inputs_encryption_status=inputs_encryption_status,
            verbose=verbose,
        )
        return result.module
    module = build_quantized_module(
        model,
        torch_inputset,
        import_qat=import_qat,
        n_bits=n_bits,
        rounding_threshold_bits=rounding_threshold_bits,
        reduce_sum_copy=reduce_sum_copy,
        calibration=calibration,
    )
    module.compile(
        _float_inputs(torch_inputset),
        configuration=configuration,
        artifacts=artifacts,
        show_mlir=show_mlir,
        p_error=p_error,
        global_p_error=global_p_error,
        verbose=verbose,
        inputs_encryption_status=inputs_encryption_status,
        accumulator_bounds=accumulator_bounds,
    )
    return module


def compile_torch_model(
    torch_model: Any,
    torch_inputset: Any,
    import_qat: bool = False,
    configuration: Any = None,
    artifacts: Any = None,
    show_mlir: bool = False,
    n_bits: Any = 8,
    rounding_threshold_bits: Any = None,
    p_error: float | None = None,
    global_p_error: float | None = None,
    verbose: bool = False,
    inputs_encryption_status: Sequence[str] | None = None,
    reduce_sum_copy: bool = False,
    device: str = "cpu",
    accumulator_bounds: str = "observed",
    calibration: Any = None,
) -> QuantizedModule:
    """Quantize a torch model and compile it to an FHE circuit.

    Args:
        torch_model: the float torch.nn.Module (no Brevitas layers).
        torch_inputset: calibration data: a tensor/array or a tuple of them (one per input).
        import_qat: import a QAT model instead of post-training quantization.
        configuration: a concrete.fhe.Configuration (without p_error/global_p_error).
        artifacts: a concrete.fhe.DebugArtifacts.
        show_mlir: print the MLIR.
        n_bits: an int or a dict of model_inputs / op_weights / op_inputs / model_outputs,
            a per-op mapping of those, or "auto" (``fhequant.tune`` searches it on the
            inputset, top-1 agreement with the float model within 1 point; docs/cost.md).
        rounding_threshold_bits: None, an int or {"n_bits": k, "method": ...}, a per-op
            mapping, or "auto".
        p_error: per-TLU error probability (neither given: 2**-40), or "auto" (searched).
        global_p_error: circuit error probability.
        verbose: print concrete's compilation steps.
        inputs_encryption_status: "encrypted"/"clear" per input (None: all encrypted).
        reduce_sum_copy: make ReduceSum copy its input first.
        device: "cpu".
        accumulator_bounds: "observed" or "worst_case".
        calibration: the statistics choosing the ranges: None/"minmax" (default),
            "percentile", "mse", "entropy", with parameters, per op (docs/calibration.md).

    Returns:
        The compiled QuantizedModule.

    Raises:
        ValueError: a Brevitas model (use compile_brevitas_qat_model), an unknown device.
    """
    _check_device(device)
    brevitas = sorted(
        {
            type(m).__name__
            for m in torch_model.modules()
            if type(m).__module__.split(".")[0] == "brevitas"
        }
    )
    if brevitas:
        raise ConfigurationError(
            f"the model has Brevitas layers ({', '.join(brevitas)}); compile it with "
            "compile_brevitas_qat_model instead of compile_torch_model"
        )
    return _compile(
        torch_model,
        torch_inputset,
        import_qat,
        configuration,
        artifacts,
        show_mlir,
        n_bits,
        rounding_threshold_bits,
        p_error,
        global_p_error,
        verbose,
        inputs_encryption_status,
        reduce_sum_copy,
        accumulator_bounds,
        calibration,
    )


def compile_onnx_model(
    onnx_model: Any,
    torch_inputset: Any,
    import_qat: bool = False,
    configuration: Any = None,
    artifacts: Any = None,
    show_mlir: bool = False,
    n_bits: Any = 8,
    rounding_threshold_bits: Any = None,
    p_error: float | None = None,
    global_p_error: float | None = None,
    verbose: bool = False,
    inputs_encryption_status: Sequence[str] | None = None,
    reduce_sum_copy: bool = False,
    device: str = "cpu",
    accumulator_bounds: str = "observed",
    calibration: Any = None,
) -> QuantizedModule:
    """Quantize an ONNX model and compile it to an FHE circuit.

    Args:
        onnx_model: an onnx.ModelProto, its serialized bytes, a path (str or os.PathLike) to
            a .onnx file, or a fhequant.onnx.NumpyModule: what ``build_quantized_module``
            accepts (any default-domain opset from 7 to the newest the installed onnx
            defines; those outside 13-21 are converted).
        torch_inputset: calibration data: an array/tensor or a tuple of them.
        import_qat: import a QAT model instead of post-training quantization.
        configuration: a concrete.fhe.Configuration (without p_error/global_p_error).
        artifacts: a concrete.fhe.DebugArtifacts.
        show_mlir: print the MLIR.
        n_bits: an int or a dict of model_inputs / op_weights / op_inputs / model_outputs,
            a per-op mapping of those, or "auto" (``fhequant.tune`` searches it on the
            inputset, top-1 agreement with the float model within 1 point; docs/cost.md).
        rounding_threshold_bits: None, an int or {"n_bits": k, "method": ...}, a per-op
            mapping, or "auto".
        p_error: per-TLU error probability (neither given: 2**-40), or "auto" (searched).
        global_p_error: circuit error probability.
        verbose: print concrete's compilation steps.
        inputs_encryption_status: "encrypted"/"clear" per input (None: all encrypted).
        reduce_sum_copy: make ReduceSum copy its input first.
        device: "cpu".
        accumulator_bounds: "observed" or "worst_case".
        calibration: the statistics choosing the ranges: None/"minmax" (default),
            "percentile", "mse", "entropy", with parameters, per op (docs/calibration.md).

    Returns:
        The compiled QuantizedModule.

    Raises:
        OnnxImportError: a missing or unreadable file (named), bytes that are not a model.
        OpsetError: an opset that cannot be read or converted (names the op and opset).
        ConfigurationError: a torch module (use compile_torch_model), an unknown device.
    """
    _check_device(device)
    if not isinstance(
        onnx_model, (onnx.ModelProto, NumpyModule, str, os.PathLike, bytes, bytearray, memoryview)
    ):
        raise ConfigurationError(
            f"compile_onnx_model takes an ONNX model (onnx.ModelProto, bytes, a .onnx file path "
            f"or a NumpyModule), not a {type(onnx_model).__name__}; compile torch modules with "
            "compile_torch_model"
        )
    if not isinstance(onnx_model, NumpyModule):
        onnx_model = NumpyModule(onnx_model)
    return _compile(
        onnx_model,
        torch_inputset,
        import_qat,
        configuration,
        artifacts,
        show_mlir,
        n_bits,
        rounding_threshold_bits,
        p_error,
        global_p_error,
        verbose,
        inputs_encryption_status,
        reduce_sum_copy,
        accumulator_bounds,
        calibration,
    )


def __getattr__(name: str) -> Any:
    """``compile_brevitas_qat_model`` lives in :mod:`fhequant.torch.brevitas` (which imports
    this module); it is importable from here too, where Concrete ML has it."""
    if name == "compile_brevitas_qat_model":
        from fhequant.torch.brevitas import compile_brevitas_qat_model

        return compile_brevitas_qat_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
