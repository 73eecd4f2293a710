"""QuantizedModule: a calibrated integer model and its clear forward (docs/contract.md §6.2, §6.3).

``forward`` = pre-processing → :meth:`QuantizedModule.quantize_input` →
:meth:`QuantizedModule.quantized_forward` → :meth:`QuantizedModule.dequantize_output` →
post-processing (the identity). ``fhe="disable"`` runs the ops' integer math in the clear on
the whole batch; ``"simulate"`` and ``"execute"`` run the compiled circuit (NotCompiledError
before ``compile``).

The FHE work (``compile``, ``bitwidth_report``, the simulated/encrypted forward) belongs to the
layer above, :mod:`fhequant.fhe`: this module never imports it. That layer registers an
:class:`FheBackend` when it is imported (``import fhequant`` imports it), and the methods
delegate to the registered backend.

A module is written to JSON with ``dump``/``dumps`` (versioned envelope, never pickle) and read
back with ``QuantizedModule.load``/``loads``; circuits are not serialized.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from fhequant import serialization
from fhequant.errors import (
    ConfigurationError,
    DTypeError,
    GraphInputError,
    MissingDependencyError,
    NotCompiledError,
    QuantizationError,
    SerializationError,
    UnquantizedTensorError,
)
from fhequant.onnx import NumpyModule
from fhequant.quantization import QuantizedArray, UniformQuantizer
from fhequant.quantization.quantizer import is_tracer
from fhequant.quantized.engines import FheMode, inference_engine_for
from fhequant.quantized.engines import fhe_mode as _fhe_mode
from fhequant.quantized.exec import run_op, track_values
from fhequant.quantized.inputs import check_forward_inputs, check_output_shapes
from fhequant.quantized.layout import check_module_layout
from fhequant.quantized.module_json import check_loaded_module, checked_module_fields
from fhequant.quantized.streaming import as_numpy

__all__ = ["FheBackend", "FheMode", "QuantizedModule", "register_fhe_backend"]

_INT_DTYPES = (np.int64, np.int32, np.int16, np.int8)


@dataclass(frozen=True)
class FheBackend:
    """The FHE operations of a QuantizedModule, provided by the layer above (fhequant.fhe).

    Attributes:
        compile: ``compile(module, inputs, **options) -> circuit``.
        run: ``run(module, q_x, mode) -> integer outputs``, mode "simulate" or "execute".
        bitwidth_report: ``bitwidth_report(module, inputs, accumulator_bounds) -> report``.
        cost_report: ``cost_report(module, inputs, **options) -> report`` (or None).
    """

    compile: Callable[..., Any]
    run: Callable[[Any, Sequence[Any], str], Any]
    bitwidth_report: Callable[[Any, Any, str | None], Any]
    cost_report: Callable[..., Any] | None = None


_fhe_backend: FheBackend | None = None


def register_fhe_backend(backend: FheBackend) -> None:
    """Install the FHE operations that ``QuantizedModule`` delegates to (the last one wins).

    ``fhequant.fhe`` calls this when it is imported; ``import fhequant`` imports it.

    Args:
        backend: the operations.
    """
    global _fhe_backend
    _fhe_backend = backend


def _fhe(what: str) -> FheBackend:
    if _fhe_backend is None:
        raise MissingDependencyError(
            f"{what}: the FHE layer is not loaded; import fhequant (or fhequant.fhe) first"
        )
    return _fhe_backend


def _output_quantizer(op: Any) -> UniformQuantizer:
    """QA(op.n_bits, None, value_is_float=False, stats, params).quantizer
    (docs/contract.md §6.2)."""
    return QuantizedArray(
        op.n_bits,
        None,
        value_is_float=False,
        stats=op.output_quant_stats,
        params=op.output_quant_params,
    ).quantizer


def _last_uses(layers: dict[str, Any], keep: Any) -> dict[str, int]:
    """The index of the last op reading each tensor (tensors in ``keep`` are never dropped)."""
    last: dict[str, int] = {}
    for step, (inputs, _) in enumerate(layers.values()):
        for name in inputs:
            last[name] = step
    for name in keep:
        last.pop(name, None)
    return last


class QuantizedModule(serialization.Serializable):
    """An integer model built by the calibration walk.

    Args:
        ordered_module_input_names: the graph input names, in order.
        ordered_module_output_names: the graph output names, in order.
        quant_layers_dict: output name → (variable input names, quantized op), in ONNX order.
        onnx_model: the ONNX model the module was built from (or None).
        onnx_preprocessing: the ONNX pre-processing model (e.g. one-hot), or None.
    """

    def __init__(
        self,
        ordered_module_input_names: Sequence[str] | None = None,
        ordered_module_output_names: Sequence[str] | None = None,
        quant_layers_dict: dict[str, tuple[tuple[str, ...], Any]] | None = None,
        onnx_model: Any = None,
        onnx_preprocessing: Any = None,
    ) -> None:
        check_module_layout(
            ordered_module_input_names, ordered_module_output_names, quant_layers_dict
        )
        self.ordered_module_input_names = tuple(ordered_module_input_names or ())
        self.ordered_module_output_names = tuple(ordered_module_output_names or ())
        self.quant_layers_dict: dict[str, tuple[tuple[str, ...], Any]] = dict(
            quant_layers_dict or {}
        )
        self._onnx_model = onnx_model
        self.onnx_preprocessing = onnx_preprocessing
        self.input_quantizers: list[UniformQuantizer | None] = []
        self.output_quantizers: list[UniformQuantizer] = self._build_output_quantizers()
        self.fhe_circuit: Any = None
        self._is_compiled = False
        self._post_processing_params: dict[str, Any] = {}
        self._preprocess_fn: Any = None
        self._node_inputs: dict[str, tuple[str, ...]] = {}

    # --- properties ----------------------------------------------------------------------

    @property
    def onnx_model(self) -> Any:
        """The ONNX model the module was built from (None if not kept)."""
        return self._onnx_model

    @property
    def is_compiled(self) -> bool:
        """True once an FHE circuit was compiled."""
        return self._is_compiled

    def check_model_is_compiled(self) -> None:
        """Raise NotCompiledError unless ``compile`` was run.

        Raises:
            NotCompiledError: the module has no FHE circuit.
        """
        if not self.is_compiled:
            raise NotCompiledError(
                "the quantized module is not compiled; call compile(inputs) before running it "
                "with fhe='simulate' or 'execute'"
            )

    @property
    def post_processing_params(self) -> dict[str, Any]:
        """Parameters of the post-processing (none for a QuantizedModule; kept in its JSON)."""
        return self._post_processing_params

    @post_processing_params.setter
    def post_processing_params(self, params: dict[str, Any]) -> None:
        self._post_processing_params = dict(params)

    def set_reduce_sum_copy(self) -> None:
        """Make every ReduceSum copy its input through a table lookup first (a bit-width aid
        of the FHE compilation; ``build_quantized_module(reduce_sum_copy=True)``)."""
        for _, op in self.quant_layers_dict.values():
            if hasattr(op, "copy_inputs"):
                op.copy_inputs = True

    def _build_output_quantizers(self) -> list[UniformQuantizer]:
        quantizers = []
        for name in self.ordered_module_output_names:
            layer = self.quant_layers_dict.get(name)
            if layer is None:
                raise GraphInputError(
                    f"graph output {name!r} is not produced by a quantized op; a module "
                    "output must come from an op (not a constant or an input)"
                )
            quantizers.append(_output_quantizer(layer[1]))
        return quantizers

    def set_inputs_quantization_parameters(
        self, *input_quantizers: UniformQuantizer | None
    ) -> None:
        """Set one quantizer per module input (None lets the input through unquantized).

        Args:
            *input_quantizers: the quantizers, in input order.
        """
        if len(input_quantizers) != len(self.ordered_module_input_names):
            raise GraphInputError(
                f"got {len(input_quantizers)} input quantizer(s) for "
                f"{len(self.ordered_module_input_names)} module input(s) "
                f"{list(self.ordered_module_input_names)}"
            )
        self.input_quantizers = list(input_quantizers)

    # --- forward -------------------------------------------------------------------------

    def _check_count(self, given: int, what: str) -> None:
        expected = len(self.ordered_module_input_names)
        if given != expected:
            raise GraphInputError(
                f"{what}: got {given} input(s) but the module takes {expected} "
                f"({list(self.ordered_module_input_names)}); pass one array per input"
            )

    def pre_processing(self, *x: Any) -> tuple[Any, ...]:
        """Apply the ONNX pre-processing (if any) and convert inputs to numpy.

        Args:
            *x: the float inputs.

        Returns:
            The pre-processed inputs.
        """
        arrays = tuple(as_numpy(v, "module input") for v in x)
        if self._preprocess_fn is None and self.onnx_preprocessing is not None:
            runner = NumpyModule(self.onnx_preprocessing)

            def run(*inputs: Any) -> tuple[Any, ...]:
                out = runner.forward(*inputs, quant_semantics=False)
                return out if isinstance(out, tuple) else (out,)

            self._preprocess_fn = run
        if self._preprocess_fn is not None:
            arrays = tuple(self._preprocess_fn(*arrays))
        return arrays

    def post_processing(self, values: Any) -> Any:
        """The identity (post-processing hook of the sklearn-style wrappers).

        Args:
            values: the dequantized outputs.

        Returns:
            ``values`` unchanged.
        """
        return values

    def forward(self, *x: Any, fhe: Any = "disable", debug: bool = False) -> Any:
        """Quantize, run the integer model, dequantize.

        Args:
            *x: one float32/float64 array per input; or Dask arrays (with
                ``fhequant.distributed`` imported, as ``import fhequant`` does: row blocks run
                on the Dask workers, the result is the same numpy array in row order).
            fhe: "disable" (clear integers), "simulate" or "execute" (need ``compile``).
            debug: with fhe="disable", also return each op's prepared inputs and the mixing
                ops' accumulators (op name → dict).

        Returns:
            The float64 output (a tuple if several), plus the debug dict when debug=True.
        """
        mode = _fhe_mode(fhe)
        engine = inference_engine_for(x)
        if debug and (mode is not FheMode.DISABLE or engine is not None):
            raise GraphInputError("debug=True works only with fhe='disable' on local arrays")
        if engine is not None:
            return engine.forward(self, *x, fhe=mode)
        arrays = self.pre_processing(*x)
        self._check_count(len(arrays), "forward")
        for name, arr in zip(self.ordered_module_input_names, arrays, strict=True):
            if arr.dtype not in (np.float32, np.float64):
                raise DTypeError(
                    f"forward: input {name!r} has dtype {arr.dtype}; give float32 or float64 "
                    "values (they are quantized by the module)"
                )
        check_forward_inputs(arrays, self.ordered_module_input_names, self, self.input_quantizers)
        q_x = self.quantize_input(*arrays)
        q_x = q_x if isinstance(q_x, tuple) else (q_x,)
        tracker: dict[str, dict[str, Any]] | None = {} if debug else None
        q_y = self._quantized_forward(q_x, mode, tracker)
        q_y = q_y if isinstance(q_y, tuple) else (q_y,)
        y = self.dequantize_output(*q_y)
        y = self.post_processing(y)
        if debug:
            return y, tracker
        return y

    __call__ = forward

    def quantize_input(self, *x: Any, dtype: Any = np.int64) -> Any:
        """Quantize each input with its module input quantizer (None passes it through).

        Args:
            *x: one float array per input.
            dtype: the integer dtype of the result.

        Returns:
            The integers (a tuple if several inputs).
        """
        self._check_count(len(x), "quantize_input")
        if len(self.input_quantizers) != len(x):
            raise QuantizationError(
                "quantize_input: the module has no input quantizers yet; build it with "
                "build_quantized_module (or set_inputs_quantization_parameters)"
            )
        out = tuple(
            v if q is None else q.quant(v, dtype=dtype)
            for q, v in zip(self.input_quantizers, x, strict=True)
        )
        return out[0] if len(out) == 1 else out

    def quantized_forward(self, *q_x: Any, fhe: Any = "disable") -> Any:
        """Run the integer model.

        Args:
            *q_x: one int64/32/16/8 array per input.
            fhe: "disable" runs the ops in the clear on the whole batch.

        Returns:
            The output integers (the raw accumulator for graph-output mixing ops), a tuple
            if several outputs.
        """
        return self._quantized_forward(q_x, _fhe_mode(fhe), None)

    def _quantized_forward(
        self, q_x: tuple[Any, ...], mode: FheMode, tracker: dict[str, Any] | None
    ) -> Any:
        self._check_count(len(q_x), "quantized_forward")
        for name, q in zip(self.ordered_module_input_names, q_x, strict=True):
            dtype = np.asarray(q).dtype
            if dtype.type not in _INT_DTYPES:
                raise DTypeError(
                    f"quantized_forward: input {name!r} has dtype {dtype}; give int64, int32, "
                    "int16 or int8 values (from quantize_input)"
                )
        if mode is not FheMode.DISABLE:
            return _fhe("quantized_forward").run(self, q_x, mode.value)
        return self._clear_forward(q_x, tracker)

    def check_quantized_tensors(self) -> None:
        """QAT import: refuse tensors that the model left unquantized (docs/contract.md §4.5).

        Raises:
            UnquantizedTensorError: (a ValueError) listing each tensor with the op consuming
                it.
        """
        found = []
        for out, (_, op) in self.quant_layers_dict.items():
            names = self._node_inputs.get(out, ())
            for index in dict.fromkeys(getattr(op, "error_tracker", None) or []):
                name = names[index] if isinstance(index, int) and index < len(names) else index
                found.append(f"{name!r} (input of {type(op).__name__} {op.op_instance_name!r})")
        if found:
            raise UnquantizedTensorError(
                "QAT import: these tensors are not quantized by the model: "
                + ", ".join(found)
                + "; add a quantization layer (e.g. brevitas QuantIdentity) before each"
            )

    def _clear_forward(self, q_x: tuple[Any, ...], tracker: dict[str, Any] | None) -> Any:
        self.check_quantized_tensors()
        values: dict[str, Any] = {}
        for name, q, quantizer in zip(
            self.ordered_module_input_names, q_x, self.input_quantizers, strict=True
        ):
            if quantizer is None:
                values[name] = q
                continue
            values[name] = QuantizedArray(
                quantizer.n_bits,
                q if is_tracer(q) else np.asarray(q),
                value_is_float=False,
                options=quantizer.quant_options,
                stats=quantizer.quant_stats,
                params=quantizer.quant_params,
                # the ops only read the integers: no copy unless they can leave the forward
                copy_values=tracker is not None or name in self.ordered_module_output_names,
                defer=True,
            )
        last_use = _last_uses(self.quant_layers_dict, self.ordered_module_output_names)
        # the tracker, the executor and the op names are context: nothing is set on the ops
        with track_values(tracker):
            for step, (out, (inputs, op)) in enumerate(self.quant_layers_dict.items()):
                values[out] = run_op(out, op, *(values[i] for i in inputs))
                # drop what no later op reads: the memory is reused by the next ops' results
                for name in inputs:
                    if last_use.get(name) == step:
                        values.pop(name, None)
        outputs = tuple(
            v.qvalues if isinstance(v, QuantizedArray) else v
            for v in (values[n] for n in self.ordered_module_output_names)
        )
        return outputs[0] if len(outputs) == 1 else outputs

    # --- FHE (fhequant.fhe) ------------------------------------------------------------------

    def compile(
        self,
        inputs: Any,
        configuration: Any = None,
        artifacts: Any = None,
        show_mlir: bool = False,
        p_error: float | None = None,
        global_p_error: float | None = None,
        verbose: bool = False,
        inputs_encryption_status: Sequence[str] | None = None,
        accumulator_bounds: str = "observed",
        device: str = "cpu",
    ) -> Any:
        """Compile the module to an FHE circuit (the registered :class:`FheBackend`,
        ``fhequant.fhe.module.compile_module``).

        Args:
            inputs: the float calibration data (one array per input), quantized into the
                batch-1 inputset.
            configuration: a concrete.fhe.Configuration (without p_error/global_p_error).
            artifacts: a concrete.fhe.DebugArtifacts.
            show_mlir: print the MLIR.
            p_error: per-TLU error probability (neither given: 2**-40).
            global_p_error: circuit error probability.
            verbose: print concrete's compilation steps.
            inputs_encryption_status: "encrypted"/"clear" per input (None: all encrypted).
            accumulator_bounds: "observed" or "worst_case" (exact for every in-range input).
            device: "cpu" (the only target: fhequant has no GPU path).

        Returns:
            The concrete Circuit, also set as ``fhe_circuit``.

        Raises:
            ConfigurationError: a device other than "cpu".
        """
        if device != "cpu":
            raise ConfigurationError(
                f"QuantizedModule.compile: device={device!r} is not supported; fhequant has no "
                "GPU path and compiles for device='cpu' only"
            )
        return _fhe("compile").compile(
            self,
            inputs,
            configuration=configuration,
            artifacts=artifacts,
            show_mlir=show_mlir,
            p_error=p_error,
            global_p_error=global_p_error,
            verbose=verbose,
            inputs_encryption_status=inputs_encryption_status,
            accumulator_bounds=accumulator_bounds,
        )

    @property
    def forward_fhe(self) -> Any:
        """The compiled circuit (alias of ``fhe_circuit``), e.g. ``.encrypt_run_decrypt(q)``."""
        if self.fhe_circuit is None:
            raise NotCompiledError("forward_fhe: the module has no FHE circuit; call compile()")
        return self.fhe_circuit

    def bitwidth_report(self, inputs: Any = None, accumulator_bounds: str | None = None) -> Any:
        """Per-op integer ranges and bit widths (``fhequant.fhe.bitwidth.BitWidthReport``).

        Args:
            inputs: float data, or None for the last compile's inputset.
            accumulator_bounds: "observed" or "worst_case" (None: the compile's).

        Returns:
            The BitWidthReport.
        """
        return _fhe("bitwidth_report").bitwidth_report(self, inputs, accumulator_bounds)

    def cost_report(self, inputs: Any = None, **options: Any) -> Any:
        """PBS per op and latency/key estimates before compiling (``fhequant.fhe.cost``)."""
        return _fhe("cost_report").cost_report(self, inputs, **options)  # type: ignore[misc]

    def bitwidth_and_range_report(self) -> dict[str, dict[str, Any]] | None:
        """Integer range and bit width of each op that computes integers in the compiled
        circuit, as Concrete ML reports them (None before ``compile``).

        Returns:
            op name -> {"range": (min, max), "bitwidth": bits}, from the compile's
            BitWidthReport (worst-case bounds when compiled with them), or None.
        """
        report = getattr(self, "_fhe_bitwidth_report", None)
        if self.fhe_circuit is None or report is None:
            return None
        worst = bool(report.worst_case)
        ops = {out: op.op_instance_name for out, (_, op) in self.quant_layers_dict.items()}
        return {
            ops.get(row.name, row.name): {
                "range": (row.wc_lo, row.wc_hi) if worst else (row.lo, row.hi),
                "bitwidth": row.wc_bits if worst else row.bits,
            }
            for row in report.rows
        }

    def dequantize_output(self, *q_y: Any) -> Any:
        """scale·(q - zp) with each output quantizer (zp may be an array).

        Args:
            *q_y: one integer array per output.

        Returns:
            float64 values (a tuple if several outputs).
        """
        if len(q_y) != len(self.output_quantizers):
            raise GraphInputError(
                f"dequantize_output: got {len(q_y)} array(s) for "
                f"{len(self.output_quantizers)} module output(s)"
            )
        check_output_shapes(q_y, self.output_quantizers, self.ordered_module_output_names)
        out = tuple(q.dequant(v) for q, v in zip(self.output_quantizers, q_y, strict=True))
        return out[0] if len(out) == 1 else out

    # --- serialization (docs/contract.md §6.3) ----------------------------------------------------

    def dump_dict(self) -> dict[str, Any]:
        """The module's fields in the order of docs/contract.md §6.3."""
        return {
            "_is_compiled": self._is_compiled,
            "input_quantizers": self.input_quantizers,
            "output_quantizers": self.output_quantizers,
            "_onnx_model": self._onnx_model,
            "_post_processing_params": self._post_processing_params,
            "ordered_module_input_names": tuple(self.ordered_module_input_names),
            "ordered_module_output_names": tuple(self.ordered_module_output_names),
            "quant_layers_dict": {
                name: (tuple(inputs), op) for name, (inputs, op) in self.quant_layers_dict.items()
            },
            "onnx_preprocessing": self.onnx_preprocessing,
        }

    @classmethod
    def load_dict(cls, metadata: dict[str, Any]) -> QuantizedModule:
        """Rebuild a module from decoded ``dump_dict`` fields (circuits are not restored).

        Args:
            metadata: the decoded fields.

        Returns:
            The module, ready for fhe="disable".
        """
        fields = checked_module_fields(cls.__name__, metadata)
        try:
            module = cls(
                fields["input_names"],
                fields["output_names"],
                fields["layers"],
                fields["onnx_model"],
                fields["onnx_preprocessing"],
            )
        except GraphInputError as exc:
            raise SerializationError(f"{cls.__name__}: {exc}") from exc
        module.input_quantizers = list(fields["input_quantizers"])
        module.output_quantizers = list(fields["output_quantizers"])
        module._post_processing_params = dict(fields["post_processing_params"] or {})
        check_loaded_module(module)
        return module

    def dump(self, file: IO[str]) -> None:
        """Write the module to a text file (versioned JSON envelope).

        Args:
            file: an open text file.
        """
        serialization.dump(self, file)

    def dumps(self) -> str:
        """The module as versioned JSON text."""
        return json.dumps(serialization.wrap_versioned(self), ensure_ascii=True, allow_nan=True)
