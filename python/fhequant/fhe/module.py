"""QuantizedModule <-> concrete: compile, bit-width report and FHE forward
(docs/contract.md §6.2, §7).

These functions hold the FHE logic of ``QuantizedModule.compile``, ``bitwidth_report`` and
``quantized_forward(fhe="simulate"|"execute")``; the module methods only delegate here,
through the :class:`~fhequant.quantized.module.FheBackend` this module registers when it is
imported (the quantized layer never imports this one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fhequant.errors import (
    ConfigurationError,
    DTypeError,
    GraphInputError,
    NoParametersError,
    NotCompiledError,
)
from fhequant.fhe.bitwidth import (
    MAX_ENCRYPTED_PRODUCT_BITS,
    BitWidthReport,
    analyse,
    check_encrypted_products,
    check_tlu_bit_widths,
    hinting_executor,
)
from fhequant.fhe.compile import (
    argument_names,
    build_configuration,
    compile_forward,
    encryption_statuses,
)
from fhequant.fhe.cost import cost_report
from fhequant.fhe.progress import progress_enabled, step
from fhequant.fhe.run import execute, simulate
from fhequant.quantized.exec import use_executor
from fhequant.quantized.inputs import check_inputs, module_input_specs
from fhequant.quantized.module import FheBackend, register_fhe_backend

__all__ = [
    "compile_inputset",
    "compile_module",
    "module_bitwidth_report",
    "run_module",
]

_BOUNDS = ("observed", "worst_case")


def _ops(module: Any) -> list[tuple[str, Any]]:
    return [(name, op) for name, (_, op) in module.quant_layers_dict.items()]


def _input_ranges(module: Any) -> list[tuple[int, int]] | None:
    ranges = []
    for quantizer in module.input_quantizers:
        if quantizer is None:
            return None
        lo, hi = quantizer.clip_bounds()
        ranges.append((int(lo), int(hi)))
    return ranges


def _forward(module: Any) -> Any:
    def forward(*q: Any) -> Any:
        return module._clear_forward(tuple(q), None)

    return forward


def _has_rounding(module: Any) -> bool:
    return any(
        any(int(v) > 0 for v in getattr(op, "lsbs_to_remove", {}).values())
        for _, op in _ops(module)
    )


def compile_inputset(module: Any, inputs: Any) -> tuple[np.ndarray, ...]:
    """Quantize the calibration rows into the compile inputset (docs/contract.md §6.2 steps 1
    and 4).

    Args:
        module: the QuantizedModule.
        inputs: one float array per input (a bare array for one input), same row count.

    Returns:
        One int64 array per input, rows on axis 0.

    Raises:
        DTypeError: a non-float input.
        GraphInputError: a wrong input count or different row counts.
    """
    given = inputs if isinstance(inputs, tuple | list) else (inputs,)
    arrays = module.pre_processing(*given)
    module._check_count(len(arrays), "compile")
    for name, arr in zip(module.ordered_module_input_names, arrays, strict=True):
        if arr.dtype.kind != "f":
            raise DTypeError(
                f"compile: input {name!r} has dtype {arr.dtype}; give the float calibration "
                "data (it is quantized by the module)"
            )
    rows = {int(a.shape[0]) if a.ndim else 0 for a in arrays}
    if len(rows) != 1:
        raise GraphInputError(
            f"compile: the inputs have different numbers of rows {sorted(rows)}; give the "
            "same number of samples for every input"
        )
    if rows == {0} or any(a.ndim == 0 for a in arrays):
        raise GraphInputError(
            "compile / bitwidth_report: the inputset is empty; give at least one sample per "
            "input (rows on axis 0), e.g. the calibration data"
        )
    specs = module_input_specs(module)
    if specs is not None and len(specs) == len(arrays):
        check_inputs(tuple(arrays), specs, "compile / bitwidth_report inputset")
    q = module.quantize_input(*arrays)
    q = q if isinstance(q, tuple) else (q,)
    return tuple(np.asarray(v, dtype=np.int64) for v in q)


def _with_extremes(
    q: tuple[np.ndarray, ...], ranges: Sequence[tuple[int, int]] | None
) -> tuple[np.ndarray, ...]:
    """Append one all-minimum and one all-maximum row per input (worst-case inputset)."""
    if ranges is None:
        return q
    out = []
    for arr, (lo, hi) in zip(q, ranges, strict=True):
        extra = np.stack([np.full(arr.shape[1:], lo), np.full(arr.shape[1:], hi)])
        out.append(np.concatenate([arr, extra.astype(np.int64)], axis=0))
    return tuple(out)


def module_bitwidth_report(
    module: Any, inputs: Any = None, accumulator_bounds: str | None = None
) -> BitWidthReport:
    """The BitWidthReport of a module over an inputset.

    Args:
        module: the QuantizedModule.
        inputs: float calibration data, or None for the inputset of the last compile.
        accumulator_bounds: "observed" or "worst_case"; None: the compile's (else observed).

    Returns:
        The report.

    Raises:
        NotCompiledError: inputs is None and the module was never compiled.
    """
    bounds = str(accumulator_bounds or getattr(module, "_fhe_accumulator_bounds", "observed"))
    if inputs is None:
        q = getattr(module, "_fhe_inputset", None)
        if q is None:
            raise NotCompiledError(
                "bitwidth_report() without inputs reports on the compile inputset; call "
                "compile(inputs) first or pass the calibration data"
            )
    else:
        q = compile_inputset(module, inputs)
        if bounds == "worst_case":
            q = _with_extremes(q, _input_ranges(module))
    return analyse(_forward(module), _ops(module), q, _input_ranges(module), bounds)


def compile_module(
    module: Any,
    inputs: Any,
    configuration: Any = None,
    artifacts: Any = None,
    show_mlir: bool = False,
    p_error: float | None = None,
    global_p_error: float | None = None,
    verbose: bool = False,
    inputs_encryption_status: Sequence[str] | None = None,
    accumulator_bounds: str = "observed",
    reduce_inputset: bool = True,
) -> Any:
    """Compile a QuantizedModule to an FHE circuit (docs/contract.md §6.2 compile, §7).

    Args:
        module: the QuantizedModule.
        inputs: float calibration data, one array per input.
        configuration: a concrete.fhe.Configuration or None.
        artifacts: a concrete.fhe.DebugArtifacts or None.
        show_mlir: print the MLIR.
        p_error: per-TLU error probability (neither given: 2**-40).
        global_p_error: circuit error probability.
        verbose: print concrete's compilation steps, and fhequant's progress lines (shown
            anyway on a terminal, see ``fhequant.fhe.progress``).
        inputs_encryption_status: "encrypted"/"clear" per input, or None (all encrypted).
        accumulator_bounds: "observed" (widths from the inputset) or "worst_case" (widths
            that hold for every input in the input quantizers' range).
        reduce_inputset: let concrete measure bounds on the rows realising each node's
            extremes only (the same circuit, see ``compile_forward``).

    Returns:
        The compiled circuit (also stored as ``module.fhe_circuit``).

    Raises:
        BitWidthError: a table-lookup input over 16 bits (before compiling).
        ValueError: p_error conflicts, bad encryption statuses or accumulator_bounds.
    """
    if accumulator_bounds not in _BOUNDS:
        raise ConfigurationError(
            f"accumulator_bounds={accumulator_bounds!r} is not supported; use 'observed' or "
            "'worst_case'"
        )
    q = compile_inputset(module, inputs)
    config = build_configuration(
        configuration,
        p_error=p_error,
        global_p_error=global_p_error,
        has_rounding=_has_rounding(module),
        show_mlir=show_mlir,
        verbose=bool(verbose),
    )
    encryption_statuses(argument_names(module.ordered_module_input_names), inputs_encryption_status)
    ranges = _input_ranges(module)
    if accumulator_bounds == "worst_case":
        q = _with_extremes(q, ranges)
    report = analyse(_forward(module), _ops(module), q, ranges, accumulator_bounds)
    check_tlu_bit_widths(report)
    # the product limit was measured at the default error probability; with another one,
    # only concrete's own 16-bit operand limit is checked before compiling
    default_p = p_error is None and global_p_error is None
    check_encrypted_products(report, MAX_ENCRYPTED_PRODUCT_BITS if default_p else 2**31)
    hints = report.records if accumulator_bounds == "worst_case" else ()
    what = (
        f"compiling the FHE circuit (max bit width {report.predicted_max_bit_width}, "
        f"{len(q[0])} inputset rows)"
    )
    try:
        with step(what, progress_enabled(verbose)):
            circuit = compile_forward(
                _forward(module),
                module.ordered_module_input_names,
                q,
                config,
                inputs_encryption_status=inputs_encryption_status,
                artifacts=artifacts,
                scope=lambda: use_executor(hinting_executor(hints)),
                reduce_inputset=reduce_inputset,
            )
    except NoParametersError as exc:
        if exc.op is not None:
            raise
        raise _name_the_widest_op(exc, report) from exc.__cause__
    module.fhe_circuit = circuit
    module._is_compiled = True
    module._fhe_inputset = q
    module._fhe_accumulator_bounds = accumulator_bounds
    module._fhe_inputs_encryption_status = inputs_encryption_status
    module._fhe_bitwidth_report = report
    return circuit


def _name_the_widest_op(exc: NoParametersError, report: BitWidthReport) -> NoParametersError:
    """concrete's NoParametersFound names no node: name the op whose values (an encrypted
    product first, else a table-lookup input) are the widest in the report."""
    worst = report.worst_case
    products = [r for r in report.rows if r.product_bits]
    if products:
        row = max(products, key=lambda r: r.product_bits)
        what = (
            f"its encrypted x encrypted product ({row.product_bits} bits, computed by concrete "
            f"with table lookups of {row.product_operand_bits}-bit inputs) is the likely cause"
        )
    else:
        tlus = [r for r in report.rows if r.feeds_tlu]
        if not tlus:
            return exc
        row = max(tlus, key=lambda r: r.wc_tlu_input_bits if worst else r.tlu_input_bits)
        bits = row.wc_tlu_input_bits if worst else row.tlu_input_bits
        what = f"its {bits}-bit table-lookup input is the widest of the circuit"
    return NoParametersError(f"op {row.label!r} ({row.op_type}): {what}; {exc}", row.name)


def run_module(module: Any, q_x: Sequence[Any], mode: str) -> Any:
    """Run the compiled circuit on a batch: "simulate" or "execute".

    Args:
        module: the compiled QuantizedModule.
        q_x: one integer array per input.
        mode: "simulate" or "execute".

    Returns:
        The output integers (a tuple if several outputs).

    Raises:
        NotCompiledError: the module has no circuit.
    """
    circuit = getattr(module, "fhe_circuit", None)
    if circuit is None:
        raise NotCompiledError(
            f"quantized_forward(fhe={mode!r}) needs a compiled FHE circuit; call compile() "
            "first or use fhe='disable'"
        )
    arrays = [np.asarray(q, dtype=np.int64) for q in q_x]
    out = simulate(circuit, *arrays) if mode == "simulate" else execute(circuit, *arrays)
    return out[0] if len(out) == 1 else out


register_fhe_backend(
    FheBackend(
        compile=compile_module,
        run=run_module,
        bitwidth_report=module_bitwidth_report,
        cost_report=cost_report,
    )
)
