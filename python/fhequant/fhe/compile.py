"""The hand-off to concrete-python: configuration, argument names, statuses, tracing
(docs/contract.md §6).

``compile_forward`` traces an integer forward (the ops' tracing executor) with
``concrete.fhe.Compiler`` over a batch-1 inputset and returns the compiled circuit; concrete
measures bounds only on the rows realising each node's extremes (found by one batch trace),
which gives the circuit of the full inputset in a fraction of the time. The
helpers around it turn the user-facing options (p_error, global_p_error, a Configuration,
inputs_encryption_status) into what concrete expects, with fhequant's errors.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from fhequant._concrete import fhe_module
from fhequant.errors import (
    CompilationError,
    ConfigurationError,
    FhequantError,
    GraphInputError,
    NoParametersError,
)
from fhequant.quantized.exec import failed_op

__all__ = [
    "DEFAULT_P_ERROR",
    "argument_names",
    "build_configuration",
    "compilation_error",
    "compile_forward",
    "encryption_statuses",
    "extreme_rows",
    "split_samples",
]


def _is_float_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


#: p_error used when neither p_error nor global_p_error is given (docs/contract.md §6.1).
DEFAULT_P_ERROR = 2.0**-40

_STATUSES = ("encrypted", "clear")


def _supports(configuration: Any, attribute: str) -> bool:
    return hasattr(configuration, attribute)


def build_configuration(
    configuration: Any = None,
    *,
    p_error: float | None = None,
    global_p_error: float | None = None,
    has_rounding: bool = False,
    show_mlir: bool = False,
    verbose: bool = False,
) -> Any:
    """The concrete Configuration for a module (docs/contract.md §6.1, §6.2 step 5).

    Args:
        configuration: a ``concrete.fhe.Configuration`` or None (defaults). It must not set
            p_error or global_p_error itself: pass them as arguments.
        p_error: error probability of each table lookup.
        global_p_error: error probability of the whole circuit.
        has_rounding: whether the module rounds accumulators (warns when the parameter
            strategy is not MULTI).
        show_mlir: print the MLIR during compilation.
        verbose: print concrete's compilation details.

    Returns:
        A new Configuration with single_precision=False, compressed keys and input
        ciphertexts where supported, and the error probabilities set.

    Raises:
        ValueError: both p_error and global_p_error are given, or the configuration sets one.
    """
    fhe = fhe_module()

    if p_error is not None and global_p_error is not None:
        raise ConfigurationError(
            "p_error and global_p_error were both given; set only one of them (or neither, "
            "for p_error = 2**-40)"
        )
    for name, value in (("p_error", p_error), ("global_p_error", global_p_error)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigurationError(
                f"{name} must be a number in (0, 1), got {type(value).__name__} {value!r}"
                + (f"; write {name}={float(value)}" if _is_float_text(value) else "")
            )
        if not 0 < float(value) < 1:
            raise ConfigurationError(
                f"{name} must lie strictly between 0 and 1 (a probability of error), got "
                f"{value!r}; the default is p_error = 2**-40"
            )
    base = fhe.Configuration() if configuration is None else configuration
    for name in ("p_error", "global_p_error"):
        if getattr(base, name, None) is not None:
            raise ConfigurationError(
                f"the configuration sets {name}={getattr(base, name)!r}; pass {name} to "
                "compile instead and leave it unset in the configuration"
            )
    if p_error is None and global_p_error is None:
        p_error = DEFAULT_P_ERROR
    changes: dict[str, Any] = {
        "p_error": p_error,
        "global_p_error": global_p_error,
        "single_precision": False,
        "show_mlir": show_mlir,
        "verbose": verbose,
    }
    for flag in ("compress_evaluation_keys", "compress_input_ciphertexts"):
        if _supports(base, flag):
            changes[flag] = True
    config = base.fork(**changes)
    strategy = getattr(config, "parameter_selection_strategy", None)
    if has_rounding and strategy is not None and strategy != fhe.ParameterSelectionStrategy.MULTI:
        warnings.warn(
            "the module rounds accumulators (rounding_threshold_bits) but the configuration "
            f"uses the {strategy} parameter selection strategy; use "
            "ParameterSelectionStrategy.MULTI to get the speed-up of rounding",
            UserWarning,
            stacklevel=3,
        )
    return config


def argument_names(input_names: Sequence[str]) -> list[str]:
    """Circuit argument names: "_" + the input name, non-alphanumerics replaced by "_".

    Args:
        input_names: the module's ordered input names.

    Returns:
        The argument names, in order.

    Raises:
        ValueError: two inputs map to the same argument name.
    """
    names = ["_" + re.sub(r"[^0-9a-zA-Z]", "_", str(n)) for n in input_names]
    if len(set(names)) != len(names):
        raise ConfigurationError(
            f"the inputs {list(input_names)} give duplicate circuit argument names {names}; "
            "rename the model inputs"
        )
    return names


def encryption_statuses(
    arg_names: Sequence[str], inputs_encryption_status: Sequence[str] | None
) -> dict[str, str]:
    """Map each circuit argument to "encrypted" or "clear" (docs/contract.md §6.2 step 3).

    Args:
        arg_names: the circuit argument names.
        inputs_encryption_status: one status per input, or None (all encrypted).

    Returns:
        argument name -> status.

    Raises:
        ValueError: missing, extra or unknown statuses, or no encrypted input.
    """
    if inputs_encryption_status is None:
        return dict.fromkeys(arg_names, "encrypted")
    if isinstance(inputs_encryption_status, str):
        raise ConfigurationError(
            "inputs_encryption_status must be a sequence with one status per input, got the "
            f"string {inputs_encryption_status!r}"
        )
    statuses = [str(s).lower() for s in inputs_encryption_status]
    if len(statuses) != len(arg_names):
        what = "missing" if len(statuses) < len(arg_names) else "extra"
        raise ConfigurationError(
            f"inputs_encryption_status has {len(statuses)} entries for {len(arg_names)} inputs "
            f"({what} statuses); give one of {_STATUSES} per input"
        )
    unknown = [s for s in statuses if s not in _STATUSES]
    if unknown:
        raise ConfigurationError(
            f"unknown encryption statuses {unknown} in inputs_encryption_status; use "
            f"{' or '.join(repr(s) for s in _STATUSES)}"
        )
    if "encrypted" not in statuses:
        raise ConfigurationError(
            "inputs_encryption_status has no 'encrypted' input; at least one input must be "
            "encrypted"
        )
    return dict(zip(arg_names, statuses, strict=True))


def _proxy(
    forward: Callable[..., Any],
    names: Sequence[str],
    scope: Callable[[], AbstractContextManager[Any]] | None = None,
) -> Callable[..., Any]:
    """A function with the given parameter names that calls forward positionally.

    With ``scope``, every call runs inside a fresh ``scope()`` (one per trace).
    """

    def proxy(*args: Any, **kwargs: Any) -> Any:
        values = list(args) + [kwargs[n] for n in names[len(args) :]]
        with scope() if scope is not None else contextlib.nullcontext():
            return forward(*values)

    proxy.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    )
    return proxy


def split_samples(q_inputs: Sequence[np.ndarray], rows: Sequence[int] | None = None) -> list[Any]:
    """Cut quantized inputs into batch-1 samples: one tuple (or array) per row.

    Args:
        q_inputs: one integer array per input, all with the same first dimension.
        rows: the rows to take, in order (None: all).

    Returns:
        A list of samples, each an array of shape (1, ...) (one input) or a tuple of them.
    """
    index = range(int(q_inputs[0].shape[0])) if rows is None else [int(i) for i in rows]
    if len(q_inputs) == 1:
        return [q_inputs[0][i : i + 1] for i in index]
    return [tuple(q[i : i + 1] for q in q_inputs) for i in index]


#: Below this many rows the whole inputset is measured (the batch trace would not pay off).
MIN_ROWS_TO_REDUCE = 64


def _batch_graph(proxy: Callable[..., Any], statuses: dict[str, str], q_inputs: Any) -> Any:
    """The fused graph traced on the whole inputset as ONE batch, its bounds measured
    (None if the forward cannot be traced that way)."""
    fhe = fhe_module()

    sample = q_inputs[0] if len(q_inputs) == 1 else tuple(q_inputs)
    try:
        return fhe.Compiler(proxy, statuses).trace([sample])
    except Exception:  # only a shortcut: the batch-1 compile below reports real errors
        return None


def extreme_rows(graph: Any, q_inputs: Sequence[np.ndarray]) -> list[int] | None:
    """Rows realising the minimum and the maximum of every computed node of a batch graph.

    Args:
        graph: a concrete Graph traced with the whole inputset as one batch (first axis =
            rows), e.g. from ``Compiler.trace([inputs])``.
        q_inputs: that inputset, one array per input.

    Returns:
        The sorted row indices (row 0 always first, so that the batch-1 trace is the same),
        or None when a computed node has no leading row axis (rows cannot be attributed).
    """
    from concrete.fhe.representation.operation import Operation

    n = int(q_inputs[0].shape[0])
    sample = q_inputs if len(q_inputs) > 1 else q_inputs[:1]
    values = graph.evaluate(*sample)
    rows = {0}
    for node in graph.query_nodes(ordered=True):
        if node.operation == Operation.Constant:
            continue
        value = np.asarray(values[node])
        if value.ndim == 0 or value.shape[0] != n:
            return None
        flat = value.reshape(n, -1)
        rows.add(int(np.argmin(flat.min(axis=1))))
        rows.add(int(np.argmax(flat.max(axis=1))))
    return sorted(rows)


def _same_bounds(circuit_graph: Any, batch_graph: Any) -> bool:
    """Whether two graphs have the same nodes (operation, per-row shape) and node bounds."""
    from concrete.fhe.representation.operation import Operation

    mine = circuit_graph.query_nodes(ordered=True)
    theirs = batch_graph.query_nodes(ordered=True)
    if len(mine) != len(theirs):
        return False
    for a, b in zip(mine, theirs, strict=True):
        if a.operation != b.operation or a.properties.get("name") != b.properties.get("name"):
            return False
        if a.operation == Operation.Constant:
            continue
        if tuple(a.output.shape[1:]) != tuple(b.output.shape[1:]):
            return False
        if a.bounds is None or b.bounds is None:
            return False
        if [int(v) for v in a.bounds] != [int(v) for v in b.bounds]:
            return False
    return True


def compile_forward(
    forward: Callable[..., Any],
    input_names: Sequence[str],
    q_inputs: Sequence[np.ndarray],
    configuration: Any,
    *,
    inputs_encryption_status: Sequence[str] | None = None,
    artifacts: Any = None,
    scope: Callable[[], AbstractContextManager[Any]] | None = None,
    reduce_inputset: bool = True,
) -> Any:
    """Trace ``forward`` with concrete and compile it over the batch-1 inputset.

    concrete measures each node's bounds by evaluating its graph once per sample, which is
    most of the compile time. With ``reduce_inputset`` (and at least
    :data:`MIN_ROWS_TO_REDUCE` rows), the forward is first traced on the whole inputset as
    one batch; its graph gives, for every computed node, the rows realising the node's
    minimum and maximum (:func:`extreme_rows`), and only those rows (row 0 first) are given
    to concrete. Every node then gets the bounds of the full inputset, so the circuit (bit
    widths, table contents, PBS count) is the one the full inputset gives: the node bounds
    are checked against the batch graph's, and the full inputset is compiled if any differ
    (tests/fhe/test_fhe_inputset.py compares both circuits' MLIR).

    Args:
        forward: integer forward (quantized inputs -> quantized outputs); runs on Tracers.
        input_names: the module's ordered input names.
        q_inputs: the quantized inputset, one int64 array per input (all rows).
        configuration: the Configuration from :func:`build_configuration`.
        inputs_encryption_status: one "encrypted"/"clear" per input, or None.
        artifacts: optional ``concrete.fhe.DebugArtifacts``.
        scope: a context-manager factory entered around every trace of ``forward`` (e.g. a
            fresh hinting executor per trace).
        reduce_inputset: measure bounds on the extreme rows only (same circuit, faster).

    Returns:
        The compiled ``concrete.fhe.Circuit``.
    """
    names = argument_names(input_names)
    statuses = encryption_statuses(names, inputs_encryption_status)
    if len(q_inputs) != len(names):
        raise GraphInputError(
            f"got {len(q_inputs)} quantized inputs for the {len(names)} module inputs "
            f"{names}; pass one int array per input"
        )
    proxy = _proxy(forward, names, scope)
    try:
        return _compile(proxy, statuses, q_inputs, configuration, artifacts, reduce_inputset)
    except FhequantError:
        raise
    except Exception as exc:  # concrete's errors become fhequant's, the original as cause
        raise compilation_error(exc) from exc


def compilation_error(exc: BaseException, op: str | None = None) -> CompilationError:
    """The typed error for an exception concrete raised while tracing or compiling.

    Args:
        exc: concrete's exception.
        op: the op it concerns when the caller knows it (else: the op being traced when
            it was raised, if any).

    Returns:
        A NoParametersError (concrete found no crypto parameters) or a CompilationError
        naming the op where known; raise it ``from exc``.
    """
    op = op if op is not None else failed_op(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    where = f"op {op!r}: " if op is not None else ""
    if "NoParametersFound" in text:
        return NoParametersError(
            f"{where}concrete found no cryptographic parameters for the circuit "
            f"({first}); a value is too wide for the error probability: lower n_bits, set "
            "rounding_threshold_bits, or raise p_error / global_p_error",
            op,
        )
    if "is not supported" in first and first.startswith("Function"):
        hint = (
            "a numpy function of the op's integer code reached concrete's tracer; this is a "
            "bug of fhequant, please report it with the model"
        )
    elif "cannot be fused" in text:
        hint = (
            "a float computation depends on several encrypted tensors or changes the shape "
            "of its input, so it cannot become one table lookup; quantize the branches "
            "separately (e.g. insert an Identity/Quant) or reshape outside the float chain"
        )
    else:
        hint = "concrete refused the circuit"
    return CompilationError(f"{where}{hint}: {type(exc).__name__}: {first}", op)


def _compile(
    proxy: Callable[..., Any],
    statuses: dict[str, str],
    q_inputs: Sequence[np.ndarray],
    configuration: Any,
    artifacts: Any,
    reduce_inputset: bool,
) -> Any:
    """The traces and the compile of :func:`compile_forward` (concrete's errors raised)."""
    fhe = fhe_module()
    rows = None
    batch = None
    if reduce_inputset and int(q_inputs[0].shape[0]) >= MIN_ROWS_TO_REDUCE:
        batch = _batch_graph(proxy, statuses, q_inputs)
        rows = None if batch is None else extreme_rows(batch, q_inputs)
    if rows is not None and batch is not None:
        circuit = fhe.Compiler(proxy, statuses).compile(
            split_samples(q_inputs, rows), configuration=configuration, artifacts=artifacts
        )
        if _same_bounds(circuit.graph, batch):
            return circuit
    compiler = fhe.Compiler(proxy, statuses)
    return compiler.compile(
        split_samples(q_inputs), configuration=configuration, artifacts=artifacts
    )
