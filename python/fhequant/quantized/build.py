"""``build_quantized_module``: the post-training quantization entry point (docs/contract.md §6.1).

The model may be a torch module (exported to ONNX with the first calibration sample as the
dummy input), an ``onnx.ModelProto`` or a ``fhequant.onnx.NumpyModule``. Calibration data is
an array or torch tensor (one input), a tuple of them (several inputs) or any iterable of such
batches; it is streamed in blocks of ``batch_size`` rows (docs/contract.md decision 4).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Protocol

import onnx

from fhequant.errors import CalibrationWarning, GraphInputError, QuantizationError
from fhequant.onnx import NumpyModule
from fhequant.quantized.calibration import apply_power_of_two_scaling, quantize_module
from fhequant.quantized.inputs import input_checker
from fhequant.quantized.module import QuantizedModule
from fhequant.quantized.n_bits import n_bits_per_op, resolve_n_bits
from fhequant.quantized.streaming import (
    as_numpy,
    auto_block_rows,
    normalize_calibration_data,
)

__all__ = [
    "MIN_CALIBRATION_ROWS",
    "CalibrationEngine",
    "build_quantized_module",
    "register_calibration_engine",
]


class CalibrationEngine(Protocol):
    """Calibrates data of its own kind (e.g. Dask collections, registered by the front-door
    layer ``fhequant.distributed``) with the numbers of :func:`quantize_module`."""

    def claims(self, data: Any) -> bool:
        """Whether this engine calibrates ``data``."""

    def first_sample(self, data: Any) -> Any:
        """A few leading rows as arrays (the dummy input of a torch export)."""

    def quantize_module(self, onnx_model: onnx.ModelProto, data: Any, **kwargs: Any) -> Any:
        """What :func:`quantize_module` returns, for the same keyword arguments plus
        ``check_inputs`` (validate the raw inputs against the model)."""


_ENGINES: list[CalibrationEngine] = []


def register_calibration_engine(engine: CalibrationEngine) -> None:
    """Let ``build_quantized_module`` hand the data ``engine`` claims to it (later
    registrations are asked first)."""
    _ENGINES.insert(0, engine)


def _engine_for(data: Any) -> CalibrationEngine | None:
    return next((engine for engine in _ENGINES if engine.claims(data)), None)


def _first_sample(data: Any) -> Any:
    """The calibration data in a form the torch exporter takes (it uses the first sample)."""
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
    return first[0] if len(first) == 1 else tuple(first)


def _numpy_module(model: Any, data: Any) -> NumpyModule:
    """The NumpyModule (pre-processed ONNX graph) of a torch, ONNX or NumpyModule model."""
    if isinstance(model, NumpyModule):
        return model
    if isinstance(model, (onnx.ModelProto, str, os.PathLike, bytes, bytearray, memoryview)):
        return NumpyModule(model)  # a proto, serialized bytes or a .onnx file path
    if type(model).__module__.startswith("torch") or hasattr(model, "state_dict"):
        return NumpyModule.from_torch(model, _first_sample(data))
    raise GraphInputError(
        f"build_quantized_module: cannot build from a {type(model).__name__}; give a torch "
        "module, an onnx.ModelProto (or its bytes, or a .onnx file path) or a "
        "fhequant.onnx.NumpyModule"
    )


#: Fewer calibration rows than this give a CalibrationWarning: min/max statistics from so few
#: samples rarely cover the inputs seen at inference.
MIN_CALIBRATION_ROWS = 10


def _warn_about_calibration(result: dict[str, Any]) -> None:
    """CalibrationWarning for too few rows and for a constant model input."""
    rows = int(result.get("n_rows", 0))
    if rows < MIN_CALIBRATION_ROWS:
        warnings.warn(
            f"build_quantized_module: only {rows} calibration row(s); the input and activation "
            f"ranges come from their min/max, use at least {MIN_CALIBRATION_ROWS} (ideally a few "
            "hundred) representative samples",
            CalibrationWarning,
            stacklevel=3,
        )
    for name, quantizer in zip(result["input_names"], result["input_quantizers"], strict=False):
        rmin, rmax = getattr(quantizer, "rmin", None), getattr(quantizer, "rmax", None)
        if rmin is not None and rmax is not None and rmax - rmin == 0:
            warnings.warn(
                f"build_quantized_module: model input {name!r} is constant ({rmin!r}) in the "
                "calibration data, so its quantizer has a zero range and every other value is "
                "clipped at inference; calibrate with representative data",
                CalibrationWarning,
                stacklevel=3,
            )


def _check_ptq_weight_bits(n_bits: Any, import_qat: bool) -> None:
    """Post-training quantization needs op_weights >= 2: PTQ weights that straddle 0 are
    quantized symmetrically, and a symmetric 1-bit quantizer has the infinite scale of
    docs/contract.md §1.3, so every output would be NaN (§1.7)."""
    spec = n_bits_per_op(n_bits)
    every = [spec.default, *spec.values.values()] if spec is not None else [resolve_n_bits(n_bits)]
    bits = min(every, key=lambda b: b.op_weights)
    if not import_qat and bits.op_weights < 2:
        raise QuantizationError(
            f"build_quantized_module: op_weights={bits.op_weights} bit is too narrow for "
            "post-training quantization (symmetric 1-bit weights have an infinite scale and "
            "every output would be NaN); use n_bits >= 2, or train a 1-bit model with "
            "Brevitas and import it with import_qat=True"
        )


def build_quantized_module(
    model: Any,
    calibration_data: Any,
    import_qat: bool = False,
    n_bits: int | dict[str, int] = 8,
    rounding_threshold_bits: Any = None,
    reduce_sum_copy: bool = False,
    keep_onnx: bool = True,
    batch_size: int | None = None,
    verbose: bool = False,
    memory_budget: int | None = None,
    calibration: Any = None,
) -> QuantizedModule:
    """Calibrate a float model and return its QuantizedModule.

    Args:
        model: a torch module, an onnx.ModelProto (any opset from 7 to the newest the
            installed onnx defines; serialized bytes or a .onnx file path also do) or a
            fhequant.onnx.NumpyModule.
        calibration_data: an array/tensor, a tuple of them (one per input) or an iterable of
            such batches.
        import_qat: import a QAT (Brevitas) model instead of post-training quantization.
        n_bits: an int or a dict with model_inputs / op_weights / op_inputs / model_outputs,
            or a per-op mapping {"default": 6, "<op name>": 4, ...} (docs/cost.md).
        rounding_threshold_bits: None, an int, or {"n_bits": k, "method": ...} for every
            mixing op, or a per-op mapping of those.
        reduce_sum_copy: make ReduceSum copy its input first (FHE bit-width helper).
        keep_onnx: keep the ONNX model on the module.
        batch_size: rows per calibration block (the data is re-chunked to blocks of exactly
            this size, anchored at row 0); None (the default) chooses it from the model's
            widest tensor (``streaming.auto_block_rows``: 256 to 16384 rows, 4096 when the
            shapes are unknown). It bounds memory, not the results: Gemm, MatMul and Conv are
            evaluated with split-independent float kernels, so every batch_size and every
            split of an iterable give the same module.
        verbose: show a tqdm progress bar of the calibration passes (also shown when stderr is
            a terminal).
        memory_budget: bytes of intermediate blocks kept in memory before spilling to disk;
            None (the default) takes 1/16 of the memory the process may use, between 32 MiB
            and 256 MiB (``streaming.auto_memory_budget``). It bounds memory, not the results.
        calibration: the statistics choosing the activation and weight ranges: None or
            "minmax" (the default, global min/max), "percentile", "mse", "entropy", a dict
            ``{"method": name, **params}``, or ``{"activations": .., "weights": .., "ops":
            {node name: ..}}`` (docs/calibration.md). Post-training only.

    Returns:
        The calibrated QuantizedModule (fhe="disable" ready).
    """
    _check_ptq_weight_bits(n_bits, import_qat)
    engine = _engine_for(calibration_data)
    sample = calibration_data if engine is None else engine.first_sample(calibration_data)
    numpy_module = _numpy_module(model, sample)
    onnx_model = numpy_module.onnx_model
    preprocess = (
        numpy_module.preprocess_inputs if numpy_module.onnx_preprocessing is not None else None
    )
    options: dict[str, Any] = {
        "n_bits": n_bits,
        "rounding_threshold_bits": rounding_threshold_bits,
        "import_qat": import_qat,
        "block_rows": auto_block_rows(onnx_model) if batch_size is None else batch_size,
        "memory_budget": memory_budget,
        "verbose": verbose,
        "preprocess": preprocess,
        "calibration": calibration,
    }
    if engine is not None:
        result = engine.quantize_module(
            onnx_model, calibration_data, check_inputs=preprocess is None, **options
        )
    else:
        calib = normalize_calibration_data(calibration_data)
        if preprocess is None:
            calib.check = input_checker(onnx_model)
        result = quantize_module(onnx_model, calib, **options)
    _warn_about_calibration(result)
    module = QuantizedModule(
        result["input_names"],
        result["output_names"],
        result["quant_layers_dict"],
        onnx_model if keep_onnx else None,
        numpy_module.onnx_preprocessing,
    )
    module._preprocess_fn = preprocess
    module._node_inputs = dict(result["node_inputs"])
    if import_qat:
        apply_power_of_two_scaling(module, rounding_threshold_bits)
    module.set_inputs_quantization_parameters(*result["input_quantizers"])
    if reduce_sum_copy:
        module.set_reduce_sum_copy()
    return module
