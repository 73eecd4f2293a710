"""``build_quantized_module``: the post-training quantization entry point (SPEC §6.1).

The model may be a torch module (exported to ONNX with the first calibration sample as the
dummy input), an ``onnx.ModelProto`` or a ``fhequant.onnx.NumpyModule``. Calibration data is
an array or torch tensor (one input), a tuple of them (several inputs) or any iterable of such
batches; it is streamed in blocks of ``batch_size`` rows (SPEC decision 4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from fhequant.errors import GraphInputError, MissingDependencyError
from fhequant.quantized.calibration import apply_power_of_two_scaling, quantize_module
from fhequant.quantized.module import QuantizedModule
from fhequant.quantized.streaming import (
    DEFAULT_BLOCK_ROWS,
    DEFAULT_MEMORY_BUDGET,
    as_numpy,
    normalize_calibration_data,
)

__all__ = ["build_quantized_module"]


def _first_sample(data: Any) -> tuple[np.ndarray, ...]:
    """The first row of each input (batch 1, float32) for the torch export dummy."""
    calib = normalize_calibration_data(data)
    if calib.arrays is not None:
        first = calib.arrays
    else:
        assert calib.batches is not None
        if iter(calib.batches) is calib.batches:
            raise GraphInputError(
                "a torch model needs its calibration data twice (ONNX export, then "
                "calibration); give a re-iterable (list, array, DataLoader), not a one-shot "
                "iterator"
            )
        batch = next(iter(calib.batches))
        first = (
            tuple(as_numpy(b) for b in batch)
            if isinstance(batch, (tuple, list))
            else (as_numpy(batch),)
        )
    return tuple(np.asarray(a[[0], ...], dtype=np.float32) for a in first)


def _to_onnx(model: Any, data: Any) -> tuple[onnx.ModelProto, Callable[..., Any] | None]:
    """The ONNX model and its input pre-processing function (if any)."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    onnx_model = getattr(model, "onnx_model", None)
    if isinstance(onnx_model, onnx.ModelProto):  # a NumpyModule
        return onnx_model, _preprocessing_of(model)
    if type(model).__module__.startswith("torch") or hasattr(model, "state_dict"):
        try:
            from fhequant.torch import export_to_onnx
        except ImportError as exc:
            raise MissingDependencyError(
                "building from a torch module needs fhequant.torch (and torch); export the "
                "model to ONNX yourself and pass the onnx.ModelProto instead"
            ) from exc
        exported = export_to_onnx(model, *_first_sample(data))
        inner: Any = getattr(exported, "onnx_model", exported)
        return inner, _preprocessing_of(exported)
    raise GraphInputError(
        f"build_quantized_module: cannot build from a {type(model).__name__}; give a torch "
        "module, an onnx.ModelProto or a fhequant.onnx.NumpyModule"
    )


def _preprocessing_of(numpy_module: Any) -> Callable[..., Any] | None:
    """The NumpyModule's input pre-processing (one-hot of Gather indices), if it has one."""
    fn = getattr(numpy_module, "pre_processing", None)
    if fn is None or getattr(numpy_module, "onnx_preprocessing", None) is None:
        return None
    return fn


def build_quantized_module(
    model: Any,
    calibration_data: Any,
    import_qat: bool = False,
    n_bits: int | dict[str, int] = 8,
    rounding_threshold_bits: Any = None,
    reduce_sum_copy: bool = False,
    keep_onnx: bool = True,
    batch_size: int = DEFAULT_BLOCK_ROWS,
    verbose: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> QuantizedModule:
    """Calibrate a float model and return its QuantizedModule.

    Args:
        model: a torch module, an onnx.ModelProto or a fhequant.onnx.NumpyModule.
        calibration_data: an array/tensor, a tuple of them (one per input) or an iterable of
            such batches.
        import_qat: import a QAT (Brevitas) model instead of post-training quantization.
        n_bits: an int or a dict with model_inputs / op_weights / op_inputs / model_outputs.
        rounding_threshold_bits: None, an int, or {"n_bits": k, "method": ...} for every
            mixing op.
        reduce_sum_copy: make ReduceSum copy its input first (FHE bit-width helper).
        keep_onnx: keep the ONNX model on the module.
        batch_size: rows per calibration block; the data is re-chunked to blocks of exactly
            this size (anchored at row 0), so the results do not depend on how an iterable
            splits the data.
        verbose: show a tqdm progress bar of the calibration passes (also shown when stderr is
            a terminal).
        memory_budget: bytes of intermediate blocks kept in memory before spilling to disk.

    Returns:
        The calibrated QuantizedModule (fhe="disable" ready).
    """
    onnx_model, preprocess = _to_onnx(model, calibration_data)
    result = quantize_module(
        onnx_model,
        calibration_data,
        n_bits=n_bits,
        rounding_threshold_bits=rounding_threshold_bits,
        import_qat=import_qat,
        block_rows=batch_size,
        memory_budget=memory_budget,
        verbose=verbose,
        preprocess=preprocess,
    )
    module = QuantizedModule(
        result["input_names"],
        result["output_names"],
        result["quant_layers_dict"],
        onnx_model if keep_onnx else None,
        getattr(model, "onnx_preprocessing", None),
    )
    module._preprocess_fn = preprocess
    if import_qat:
        apply_power_of_two_scaling(module)
    module.set_inputs_quantization_parameters(*result["input_quantizers"])
    if reduce_sum_copy:
        for _, op in module.quant_layers_dict.values():
            if hasattr(op, "copy_inputs"):
                op.copy_inputs = True
    return module
