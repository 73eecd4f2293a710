"""Base classes of the quantized ops (docs/contract.md §2) and the contract the PTQ walk relies on.

An op wraps the float implementation of one ONNX op type (``_impl_for_op_named``; its
metadata, a :class:`~fhequant.quantized.ops.float_specs.FloatOpSpec`, says which inputs exist,
which are raw and which attributes it takes). The PTQ walk (``fhequant.quantized.module``,
docs/contract.md §4) uses exactly this API:

Construction
    ``QuantizedX(n_bits_output, op_instance_name, int_input_names=None, constant_inputs=None,
    input_quant_opts=None, **attrs)``; mixing ops (``QuantizedMixingOp``) also take
    ``rounding_threshold_bits=None`` (normalised, §2.4). ``n_bits_output`` is model_outputs.
    ``constant_inputs`` maps an input index or name (digit strings accepted) to a
    QuantizedArray (a processed initializer) or a raw numpy value. Errors: QuantizedOpError
    (a ValueError) for unknown attributes/constants and for invalid attribute values.

Class-level queries (no instance needed)
    ``must_quantize_input(index) -> bool``: False for raw inputs (shapes, axes, indices...),
        which the walk must leave as plain arrays instead of calling _process_initializer.
    ``quantize_inputs_with_model_outputs_precision: bool``: the op's input_quant_opts use
        model_outputs bits instead of op_inputs (§3.0).
    ``is_mixing``: True for ops that accept rounding_threshold_bits.

Instance state
    ``n_bits`` (int), ``op_instance_name`` (str), ``int_input_names`` (set[str], the encrypted
    producers), ``constant_inputs`` (dict[int, Any]), ``input_quant_opts``
    (QuantizationOptions), ``attrs`` (dict), ``output_quant_opts`` (QuantizationOptions, the
    options of every QuantizedArray the op returns), ``output_quant_params`` /
    ``output_quant_stats`` (None until ``calibrate``; the walk may overwrite them, e.g. with a
    graph-output Gemm's (m, out_zp)), ``produces_graph_output`` (bool, set by the walk before
    the q_impl calibration pass), ``lsbs_to_remove`` (dict[str, int]) and
    ``rounding_threshold_bits`` (None or {"n_bits": k, "method": Exactness}) on mixing ops,
    ``error_tracker`` (None or a list: QAT import sets a list and the op appends the input
    slot index (int, constants included) of each input it had to re-quantize with QAT
    options, §4.5), ``debug_value_tracker`` (None or a dict: when set, q_impl stores its
    prepared inputs and, for mixing ops, the integer accumulator under
    ``debug_value_tracker[op_instance_name]``; the debug forward passes its tracker as context
    instead, ``fhequant.quantized.exec.track_values``).

Registration
    Defining a subclass whose body sets ``_impl_for_op_named`` registers it as the quantized
    class of that ONNX op type (``fhequant.quantized.ops.registry``, checked at definition:
    one class per op type, and the op type needs a float implementation); classes whose body
    does not set it are abstract or intermediate bases and are not registered.

Capabilities (class attributes; the calibration walk reads them off the op's class)
    Each says what the walk may do with the op beyond the generic path (the defaults claim
    nothing); declare one only on an op whose type satisfies it (the registry tests check).

    ``calibrate_by_table: bool``
        The float implementation maps each element on its own (output element i depends only
        on input element i and scalar constants), with the default ``calibrate`` and
        ``q_impl``: on a quantized input, PTQ evaluates it once per distinct input integer
        and reads the output integers from a table.
    ``monotone_table: bool``
        With ``calibrate_by_table``: the float implementation is exactly non-decreasing, so
        the walk evaluates it on the input's whole integer range (no presence marks).
    ``split_independent_impl: Callable | None``
        The op's numbers with rows independent of the rows evaluated with them, for ops whose
        float implementation is not (BLAS matmuls sum in an order chosen by shape; None: it
        is): the walk evaluates them through it, so calibration is batch-size invariant.
    ``fused_extremes: "gemm" | "matmul" | "conv" | None``
        The PTQ statistics pass may take the min/max of the float result from the native
        extremes kernels of this layout (``fhequant.quantized.fused_stats``); they compute the
        sums of ``split_independent_impl``, which the op must declare too.
    ``requant_table_if_constant: tuple[int, ...] | None``
        ``q_impl`` reads only the integers of its re-quantized tensor inputs, so PTQ may
        compute that re-quantization as a table over the producer's integers, when the inputs
        at these indices are constants (``()``: always; None: never).
    ``pow2_accumulator_shift: bool``
        A mixing op with a "matmul" accumulator: the QAT power-of-two pass (docs/contract.md §4.7)
        may turn its rescale into a shift of that accumulator.
    ``narrow_inputs: bool``
        ``q_impl`` reads ``narrow_qvalues`` of its inputs: tables may write them int8/int16.
    ``clips_percentiles: bool``
        ``_calibration_values`` clips the float result to its 0.1/99.9 percentiles (§3.7), which
        the streamed statistics pass computes exactly (else: the default min/max calibration).

``can_fuse() -> bool``
    True when the op is a float TLU of a single encrypted tensor; such an op takes
    ``.values`` (unquantized floats) of its inputs.

``calibrate(*inputs) -> np.ndarray``
    ``inputs`` are the variable inputs in order: float arrays, QuantizedArrays (their
    ``.values`` are used) or raw arrays. Runs the float implementation, sets
    ``output_quant_stats`` and ``output_quant_params`` from QA(n_bits, raw) (unsigned,
    asymmetric; raw outputs skip this) and returns the raw float result.

``q_impl(*q_inputs, calibrate_rounding=False, **attrs) -> QuantizedArray | np.ndarray``
    ``q_inputs`` are the variable inputs: QuantizedArrays for tensors, raw arrays for raw
    inputs. Returns a QuantizedArray (for graph-output Gemm/Conv/Add/Mul/Div/ReduceSum one
    whose qvalues are the raw accumulator and whose params carry the rescale), or a raw array
    when every input is raw or the op has a raw output. ``calibrate_rounding=True`` (mixing
    ops, PTQ pass only) updates ``lsbs_to_remove``. Raises NotCalibratedError when a
    quantized output is needed before ``calibrate``. ``attrs`` override ``self.attrs`` for
    this call only.

Integer math goes through an executor (``fhequant.quantized.exec``): the clear one outside
tracing, the tracing one (concrete.fhe calls) when an input is a concrete Tracer, or the one
forced with ``use_executor`` (e.g. with an observer of the integer nodes). The executor and
the running op are context, never attributes set on the op: ops may run in several threads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np

from fhequant.errors import NotCalibratedError, QuantizedOpError
from fhequant.quantization import (
    QuantizationOptions,
    QuantizedArray,
    UniformQuantizationParameters,
)
from fhequant.quantized.exec import (
    Executor,
    executor_for,
    is_tracer,
    routed_float_impl,
    tracked_values,
)
from fhequant.quantized.ops.attributes import check_attributes
from fhequant.quantized.ops.float_specs import FloatOpSpec, float_spec
from fhequant.quantized.ops.inputs import (
    index_constants,
    is_fresh,
    on_uniform_grid,
    quantized_values_copy,
    reads_as_quantized,
    slot_inputs,
    zp_is_scalar,
)
from fhequant.quantized.ops.op_json import dump_op_fields, load_op_fields
from fhequant.quantized.ops.registry import op_type_to_register, register_op
from fhequant.quantized.ops.rounding import (
    ROUNDING_IDS,
    compute_bits_precision,
    normalize_rounding_threshold_bits,
)
from fhequant.serialization import Serializable

__all__ = [
    "DEFAULT_MODEL_BITS",
    "ROUNDING_IDS",
    "ExtremesLayout",
    "QuantizedMixingOp",
    "QuantizedOp",
    "compute_bits_precision",
    "normalize_rounding_threshold_bits",
    "quantized_values_copy",
]

DEFAULT_MODEL_BITS = 5

#: The layouts of the native extremes kernels (``QuantizedOp.fused_extremes``).
ExtremesLayout = Literal["gemm", "matmul", "conv"]


class QuantizedOp(Serializable):
    """A quantized ONNX op: float calibration plus integer inference (docs/contract.md §2).

    Every subclass is registered for JSON under its class name (``dumps``/``loads``), and
    every subclass whose body sets ``_impl_for_op_named`` as the quantized class of that ONNX
    op type (see the module docstring, also for the capability attributes).

    Args:
        n_bits_output: bits of the output quantizer (PTQ passes model_outputs).
        op_instance_name: the ONNX node name (used in error messages and circuit tags).
        int_input_names: names of the encrypted tensors the op depends on through fusable
            ops; default {"0"}.
        constant_inputs: constant inputs keyed by index or input name.
        input_quant_opts: options used to (re-)quantize the inputs; default
            QuantizationOptions(n_bits_output, is_signed=True).
        **attrs: ONNX attributes; missing ones take the float implementation's defaults.
    """

    _impl_for_op_named: ClassVar[str] = ""
    quantize_inputs_with_model_outputs_precision: ClassVar[bool] = False
    is_mixing: ClassVar[bool] = False

    # capabilities: what the calibration walk may do with the op (module docstring)
    calibrate_by_table: ClassVar[bool] = False
    monotone_table: ClassVar[bool] = False
    split_independent_impl: ClassVar[Callable[..., Any] | None] = None
    fused_extremes: ClassVar[ExtremesLayout | None] = None
    requant_table_if_constant: ClassVar[tuple[int, ...] | None] = None
    pow2_accumulator_shift: ClassVar[bool] = False
    narrow_inputs: ClassVar[bool] = False
    clips_percentiles: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register the class for JSON and, when its body sets ``_impl_for_op_named``, as
        the quantized class of that ONNX op type (raises OpRegistrationError first when it
        cannot be, so a refused class is registered nowhere)."""
        op_type = op_type_to_register(cls)
        super().__init_subclass__(**kwargs)
        if op_type is not None:
            register_op(op_type, cls)

    def __init__(
        self,
        n_bits_output: int,
        op_instance_name: str,
        int_input_names: set[str] | None = None,
        constant_inputs: dict[str, Any] | dict[int, Any] | None = None,
        input_quant_opts: QuantizationOptions | None = None,
        **attrs: Any,
    ) -> None:
        spec = self.spec()
        self.n_bits = n_bits_output
        self.op_instance_name = op_instance_name
        self._int_input_names: set[str] = {"0"} if int_input_names is None else set(int_input_names)
        self.constant_inputs: dict[int, Any] = self._index_constants(constant_inputs, spec)
        self.input_quant_opts: QuantizationOptions = (
            copy.deepcopy(input_quant_opts)
            if input_quant_opts is not None
            else QuantizationOptions(n_bits_output, is_signed=True)
        )
        self.attrs: dict[str, Any] = {**copy.deepcopy(dict(spec.attr_defaults)), **attrs}
        check_attributes(self._label(), spec, attrs, self.attrs, self._spatial_rank())
        self.output_quant_params: UniformQuantizationParameters | None = None
        self.output_quant_stats: Any = None
        self.produces_graph_output = False
        self.error_tracker: list[int] | None = None
        self.debug_value_tracker: dict[str, dict[str, Any]] | None = None
        if self.can_fuse():
            self.input_quant_opts.is_qat = False
        self.output_quant_opts = self._make_output_quant_opts()

    # --- metadata -------------------------------------------------------------------------

    @classmethod
    def spec(cls) -> FloatOpSpec:
        """The float implementation's metadata (inputs, attribute defaults, raw inputs)."""
        return float_spec(cls._impl_for_op_named)

    @classmethod
    def op_type(cls) -> str:
        """The ONNX op type this class quantizes (Concrete ML's name)."""
        return cls._impl_for_op_named

    @classmethod
    def must_quantize_input(cls, input_index: int) -> bool:
        """Whether the input at this index is a tensor to quantize (False for raw inputs)."""
        return input_index not in cls.spec().raw_inputs

    @property
    def int_input_names(self) -> set[str]:
        """The encrypted tensors this op depends on through fusable ops."""
        return self._int_input_names

    @int_input_names.setter
    def int_input_names(self, names: set[str]) -> None:
        self._int_input_names = set(names)

    def _label(self) -> str:
        return f"{type(self).__name__} '{self.op_instance_name}'"

    def _index_constants(
        self, constant_inputs: dict[str, Any] | dict[int, Any] | None, spec: FloatOpSpec
    ) -> dict[int, Any]:
        return index_constants(self._label(), constant_inputs, spec)

    def _spatial_rank(self) -> int | None:
        """The number of spatial axes of a window op when its constants tell (None: the
        window attributes decide); checked against strides/pads/dilations at construction."""
        return None

    def can_fuse(self) -> bool:
        """True if the op is a float TLU of one encrypted tensor (fusable)."""
        return True

    def _make_output_quant_opts(self) -> QuantizationOptions:
        opts = copy.deepcopy(self.input_quant_opts)
        if self.can_fuse():
            opts.is_qat = False
        return opts

    def _get_output_quant_opts(self) -> QuantizationOptions:
        return self.output_quant_opts

    # --- the float implementation ---------------------------------------------------------

    def call_impl(self, *inputs: Any, **attrs: Any) -> Any:
        """Run the float implementation; it must give exactly one output.

        A float implementation routed for this op (``route_float_impl``, e.g. the
        split-independent matmul of the calibration walk) is tried first.
        """
        routed = routed_float_impl(self)
        if routed is not None:
            out = routed(*inputs, **attrs)
            if out is not NotImplemented:
                return out
        out = self.spec().impl(*inputs, **attrs)
        if isinstance(out, tuple):
            if len(out) != 1:
                raise QuantizedOpError(
                    f"{self._label()}: the op has {len(out)} outputs; quantized ops must have "
                    "exactly one"
                )
            out = out[0]
        return out

    def _merged_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return {**self.attrs, **attrs} if attrs else self.attrs

    # --- inputs ---------------------------------------------------------------------------

    def _slot_inputs(self, inputs: tuple[Any, ...]) -> list[Any]:
        """Constants fill their slots first; variable inputs fill the rest, in order."""
        return slot_inputs(self._label(), self.spec(), inputs, self.constant_inputs)

    def _prepare_inputs_with_constants(
        self,
        *inputs: Any,
        calibrate: bool,
        quantize_actual_values: bool,
    ) -> list[Any]:
        """Build the full input list (docs/contract.md §2.2).

        Args:
            inputs: the variable inputs.
            calibrate: float path: QuantizedArrays give their ``.values``.
            quantize_actual_values: integer path of mixing and shape ops: constants stay
                QuantizedArrays and variable QuantizedArrays follow the re-quantization rule.

        Returns:
            One entry per input slot.
        """
        slots = self._slot_inputs(inputs)
        out: list[Any] = []
        for i, value in enumerate(slots):
            if not isinstance(value, QuantizedArray):
                out.append(value)
            elif calibrate or not quantize_actual_values:
                out.append(value.values)
            elif i in self.constant_inputs:
                out.append(value)
            else:
                out.append(self._requantize(value, i))
        return out

    def _requantize(self, inp: QuantizedArray, index: int) -> QuantizedArray:
        """The re-quantization rule at a non-fusable input (docs/contract.md §2.2)."""
        opts = self.input_quant_opts
        qz = inp.quantizer
        scalar_zp = zp_is_scalar(qz.zero_point)
        if reads_as_quantized(opts, qz):
            tracked = self._value_tracker() is not None  # integers shared unless tracked
            return quantized_values_copy(inp, copy_values=tracked, narrow=self.narrow_inputs)
        if (
            opts.is_qat
            and qz.is_qat
            and scalar_zp
            and not qz.is_precomputed_qat
            and not on_uniform_grid(qz, opts)
        ):
            # QAT import: the accumulator of a QAT op (Gemm/Conv/Add) read by another mixing
            # op with no QuantIdentity between them (the sum of two QuantLinear outputs): the
            # model gives it no grid, so it is re-quantized from its statistics, as PTQ does
            ptq = copy.deepcopy(opts)
            ptq.is_qat = False
            return QuantizedArray(
                opts.n_bits, inp.values, options=ptq, stats=qz.quant_stats, copy_values=False
            )
        if (
            opts.is_qat
            and self.error_tracker is not None
            and not qz.is_precomputed_qat
            and not on_uniform_grid(qz, opts)
        ):
            # a float TLU's output the model left unquantized: reported (docs/contract.md §4.5)
            self.error_tracker.append(index)
        return QuantizedArray(
            opts.n_bits,
            inp.values,
            options=opts,
            stats=qz.quant_stats,
            params=qz.quant_params if qz.is_qat and scalar_zp else None,
            # only read here: the re-quantized array may share the input's float values
            copy_values=False,
        )

    def _value_tracker(self) -> dict[str, dict[str, Any]] | None:
        """The debug forward's tracker (context, ``track_values``), else
        ``debug_value_tracker``."""
        tracker = tracked_values()
        return tracker if tracker is not None else self.debug_value_tracker

    def _track(self, key: str, value: Any) -> None:
        tracker = self._value_tracker()
        if tracker is not None:
            tracker.setdefault(self.op_instance_name, {})[key] = value

    # --- calibration and inference --------------------------------------------------------

    def _is_raw_output(self) -> bool:
        return self.spec().raw_output

    def calibrate(self, *inputs: Any) -> Any:
        """Run the float op on calibration data and set the output quantizer
        (docs/contract.md §2.3).

        Args:
            *inputs: the variable inputs (floats, QuantizedArrays or raw arrays).

        Returns:
            The float result of the op.
        """
        prepared = self._prepare_inputs_with_constants(
            *inputs, calibrate=True, quantize_actual_values=False
        )
        raw = self.call_impl(*prepared, **self.attrs)
        if self._is_raw_output():
            return raw
        self._set_output_quantizer(self._calibration_values(raw, prepared))
        return raw

    def _calibration_values(self, raw: Any, prepared: list[Any]) -> Any:
        """The values the output statistics are computed on (BatchNorm clips them)."""
        return raw

    def _set_output_quantizer(self, raw: Any) -> None:
        values = np.asarray(raw)
        if values.dtype.kind in "biu":
            # integer results (shape arithmetic on raw inputs: Concat of a Shape, ...): their
            # quantizer is that of the same values as floats; a raw result flows on as is
            values = values.astype(np.float64)
        samples = QuantizedArray(self.n_bits, values)
        self.output_quant_params = samples.quantizer.quant_params
        self.output_quant_stats = samples.quantizer.quant_stats

    def _check_calibrated(self) -> None:
        if self.output_quant_params is None:
            raise NotCalibratedError(
                f"{self._label()} has no output quantizer: call calibrate() (or quantize the "
                "module) before running it"
            )

    def _calibrated_params(self) -> UniformQuantizationParameters:
        self._check_calibrated()
        assert self.output_quant_params is not None  # for mypy: _check_calibrated raised
        return self.output_quant_params

    def make_output_quant_array(self, values: Any, *, owned: bool = False) -> QuantizedArray:
        """Quantize float results with the calibrated output quantizer.

        Args:
            values: the float results.
            owned: ``values`` is a fresh array nothing else references (it is not copied).

        Returns:
            The QuantizedArray of ``values`` (its qvalues computed on first read).
        """
        self._check_calibrated()
        return QuantizedArray(
            self.n_bits,
            values,
            value_is_float=True,
            options=self._get_output_quant_opts(),
            stats=self.output_quant_stats,
            params=self.output_quant_params,
            copy_values=not owned,
            defer=True,
        )

    def prepare_output(self, values: Any) -> QuantizedArray:
        """Concrete ML's name of :meth:`make_output_quant_array` (float ``values``)."""
        return self.make_output_quant_array(values)

    def make_raw_accumulator_array(
        self, acc: Any, scale: Any, zero_point: Any, *, owned: bool = False
    ) -> QuantizedArray:
        """A graph-output QuantizedArray holding the raw accumulator with its rescale.

        Args:
            acc: the integer accumulator.
            scale: the rescale factor.
            zero_point: the zero point of the accumulator.
            owned: ``acc`` is a fresh array nothing else references (it is not copied).

        Returns:
            The QuantizedArray of ``acc``.
        """
        self._check_calibrated()
        params = UniformQuantizationParameters(scale=scale, zero_point=zero_point, offset=0)
        return QuantizedArray(
            self.n_bits,
            acc,
            value_is_float=False,
            options=self._get_output_quant_opts(),
            stats=self.output_quant_stats,
            params=params,
            copy_values=not owned,
            defer=True,
        )

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Run the op on quantized inputs: by default a float TLU of ``.values``
        (docs/contract.md §2.3).

        Args:
            *q_inputs: the variable inputs (QuantizedArrays, or raw arrays).
            calibrate_rounding: unused by univariate ops.
            **attrs: attribute overrides for this call.

        Returns:
            A QuantizedArray at n_bits, or the raw result if every input is raw.
        """
        prepared = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=False
        )
        self._track("prepared_inputs", prepared)
        merged = self._merged_attrs(attrs)
        if self._is_raw_output() or not any(isinstance(q, QuantizedArray) for q in q_inputs):
            return self.call_impl(*prepared, **merged)
        out = self._float_tlu(prepared, q_inputs, merged)
        return self.make_output_quant_array(out, owned=is_fresh(out, prepared))

    def __call__(self, *q_inputs: Any, **attrs: Any) -> Any:
        """``op(*q_inputs)`` runs ``q_impl(*q_inputs, **attrs)`` (as the reference's ops do).

        Args:
            *q_inputs: the variable inputs (QuantizedArrays, or raw arrays).
            **attrs: attribute overrides for this call (and ``calibrate_rounding``).

        Returns:
            What ``q_impl`` returns.
        """
        return self.q_impl(*q_inputs, **attrs)

    def _float_tlu(self, prepared: list[Any], q_inputs: tuple[Any, ...], attrs: Any) -> Any:
        """The float implementation (numpy/scipy code) of the op's encrypted operands; traced
        by any executor (plain, hinted compile), the Tracers among the prepared inputs enter
        ONE generic node (``Executor.float_function``) that concrete fuses with the
        surrounding (de)quantization into one table lookup (docs/contract.md §2.3). An op that
        would change its input's shape is traced as plain numpy (concrete then refuses it
        with an error naming the op). ``q_inputs``: the variable inputs (unused)."""
        traced = [i for i, a in enumerate(prepared) if is_tracer(a)]
        if not traced:
            return self.call_impl(*prepared, **attrs)
        ex = self.executor(*(prepared[i] for i in traced))
        args = list(prepared)
        # the generic node keeps the shape of its input: check the op does too
        shapes = {tuple(prepared[i].shape) for i in traced}
        probe = [np.ones(a.shape) if i in traced else a for i, a in enumerate(args)]
        with np.errstate(all="ignore"):
            probe_shape = np.shape(self.call_impl(*probe, **attrs))
        if len(shapes) != 1 or probe_shape not in shapes:
            return self.call_impl(*prepared, **attrs)

        def fn(*values: Any) -> Any:
            for i, v in zip(traced, values, strict=True):
                args[i] = v
            return self.call_impl(*args, **attrs)

        fn.__name__ = self._impl_for_op_named.lower() or "op"
        return ex.float_function(fn, *(prepared[i] for i in traced))

    # --- JSON (fhequant.quantized.ops.op_json) ---------------------------------------------

    def dump_dict(self) -> dict[str, Any]:
        """Every field of the op, keys sorted (docs/contract.md §6.3); constant input keys as
        strings.

        Returns:
            The fields to write (the serializer encodes the values).
        """
        return dump_op_fields(self)

    @classmethod
    def load_dict(cls, metadata: dict[str, Any]) -> QuantizedOp:
        """Rebuild an op from the fields written by ``dump_dict``.

        Args:
            metadata: the decoded fields.

        Returns:
            The op (of this class, which must implement ``_impl_for_op_named``).

        Raises:
            SerializationError: the op type does not match the class.
        """
        return load_op_fields(cls, metadata)

    # --- misc -----------------------------------------------------------------------------

    def executor(self, *arrays: Any) -> Executor:
        """The executor for these operands (tracing if any is a concrete Tracer)."""
        return executor_for(*arrays)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_bits={self.n_bits}, name={self.op_instance_name!r})"


# The mixing base lives in its own module (it subclasses QuantizedOp); importable from here too.
from fhequant.quantized.ops.mixing import QuantizedMixingOp  # noqa: E402
