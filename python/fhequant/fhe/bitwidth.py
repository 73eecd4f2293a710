"""Bit widths of a quantized module before compiling it (docs/contract.md §7).

:func:`analyse` runs the clear forward over a module's compile inputset on
:func:`recording_executor` (the clear backend with a
:class:`~fhequant.quantized.exec.RecordingObserver`) and returns a :class:`BitWidthReport`:
per op, the observed and worst-case integer ranges and widths, whether the op feeds a table
lookup and how wide that lookup's input is; ``predicted_max_bit_width`` equals the compiled
circuit's ``graph.maximum_integer_bit_width()``. :func:`hinting_executor` is what the
``accumulator_bounds="worst_case"`` compile traces with. :func:`check_tlu_bit_widths` raises
BitWidthError before compiling when a table-lookup input needs more than 16 bits.

This module only configures the executor of ``fhequant.quantized.exec``; the integer nodes
and their worst-case rules are written there, once, and the forward names the op of each
node (``run_op``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fhequant.errors import BitWidthError, ConfigurationError
from fhequant.quantized.exec import (
    MAX_TLU_BIT_WIDTH,
    MODULE,
    ClearBackend,
    Executor,
    HintingObserver,
    RecordingObserver,
    TracingBackend,
    ValueRecord,
    observed_range,
    type_range,
    use_executor,
)

__all__ = [
    "MAX_ENCRYPTED_PRODUCT_BITS",
    "MAX_TLU_BIT_WIDTH",
    "BitWidthReport",
    "HintingExecutor",
    "OpBitWidth",
    "ValueRecord",
    "analyse",
    "check_encrypted_products",
    "check_tlu_bit_widths",
    "hinting_executor",
    "op_scope",
    "recording_executor",
    "type_range",
]


def recording_executor() -> Executor:
    """The clear executor recording every integer node (the bit-width analysis)."""
    return Executor(ClearBackend(), RecordingObserver())


def hinting_executor(records: Sequence[ValueRecord] = ()) -> Executor:
    """The tracing executor hinting each node with its recorded worst-case range.

    Args:
        records: a BitWidthReport's records (none: it traces exactly like TRACING, but the
            ops' float functions are traced as numpy code, as in the recording).

    Returns:
        The executor to force while tracing (``use_executor`` / ``op_scope``).
    """
    return Executor(TracingBackend(), HintingObserver(records))


#: The earlier name of :func:`hinting_executor`.
HintingExecutor = hinting_executor


@contextlib.contextmanager
def op_scope(ops: Sequence[tuple[str, Any]], executor: Executor) -> Iterator[None]:
    """Force ``executor`` for a forward over ``ops``.

    The forward names the op of each node itself (``run_op``, as ``QuantizedModule`` does);
    ``ops`` is accepted for the callers of the earlier API, which patched the ops instead.

    Args:
        ops: (name, op) pairs.
        executor: the executor to force.

    Yields:
        None.
    """
    with use_executor(executor):
        yield


@dataclass
class OpBitWidth:
    """One row of the report: the integer values of one op.

    Attributes:
        name: op instance name.
        op_type: op class name.
        lo: observed minimum over the op's integer nodes.
        hi: observed maximum.
        bits: observed max width over the op's nodes (constants included).
        wc_lo: worst-case minimum.
        wc_hi: worst-case maximum.
        wc_bits: worst-case max width.
        feeds_tlu: whether the op's result goes through a table lookup.
        tlu_input_bits: width of that table-lookup input (after rounding), 0 if none.
        wc_tlu_input_bits: the same in the worst case.
        product_operand_bits: for an op with an encrypted x encrypted product (Mul, Div),
            the width concrete gives the product's operands (the widest operand + 1): the
            input width of the two table lookups ⌊(x±y)²/4⌋ concrete computes it with; 0 if
            the op has none. Which bounds: those of the report (observed or worst case).
        product_bits: the width of that product, which is the output width of those table
            lookups; 0 if none.
        node: the ONNX node name of the op ("" if unknown); ``name`` is the op's output
            tensor, a bare number for some exported graph outputs (e.g. "7").
    """

    name: str
    op_type: str
    lo: int
    hi: int
    bits: int
    wc_lo: int
    wc_hi: int
    wc_bits: int
    feeds_tlu: bool
    tlu_input_bits: int
    wc_tlu_input_bits: int
    product_operand_bits: int = 0
    product_bits: int = 0
    node: str = ""

    @property
    def label(self) -> str:
        """The node name, with the output tensor when it differs (for reports and errors)."""
        if self.node and self.node != self.name:
            return f"{self.node} ({self.name})"
        return self.name


def _tlu_bits(recs: Sequence[ValueRecord], worst_case: bool) -> int:
    """Width of the op's table-lookup input as concrete assigns it."""
    last = [r for r in recs if r.feeds_tlu]
    if not last:
        return 0
    tail = last[-1]
    if tail.label == "rounded":
        pre = tail.pre_round_wc_bits if worst_case else tail.pre_round_bits
        return pre - tail.lsbs_removed
    return max(r.width(worst_case) for r in recs)


def _op_row(
    name: str,
    op_type: str,
    recs: Sequence[ValueRecord],
    worst_case: bool = False,
    node: str = "",
) -> OpBitWidth:
    computed = [r for r in recs if r.label != "constant"] or list(recs)
    lo = min(r.lo for r in computed)
    hi = max(r.hi for r in computed)
    wlo = min(min(r.wc_lo, r.lo) if r.wc_lo is not None else r.lo for r in computed)
    whi = max(max(r.wc_hi, r.hi) if r.wc_hi is not None else r.hi for r in computed)
    return OpBitWidth(
        name=name,
        op_type=op_type,
        lo=lo,
        hi=hi,
        bits=max(r.width(False) for r in recs),
        wc_lo=wlo,
        wc_hi=whi,
        wc_bits=max(r.width(True) for r in recs),
        feeds_tlu=any(r.feeds_tlu for r in recs),
        tlu_input_bits=_tlu_bits(recs, False),
        wc_tlu_input_bits=_tlu_bits(recs, True),
        product_operand_bits=max(
            (
                r.product_operand_wc_bits if worst_case else r.product_operand_bits
                for r in recs
                if r.product_operand_bits
            ),
            default=0,
        ),
        product_bits=max((r.width(worst_case) for r in recs if r.product_operand_bits), default=0),
        node=node,
    )


@dataclass
class BitWidthReport:
    """Per-op integer ranges and widths over a compile inputset (docs/contract.md §7).

    Attributes:
        rows: one OpBitWidth per op that computes integers, in execution order.
        records: every recorded node.
        accumulator_bounds: "observed" or "worst_case": which widths the circuit gets.
        op_settings: op name -> (n_bits of the op inputs, rounding threshold) when known.
        n_samples: rows of the inputset the records were taken over.
    """

    rows: list[OpBitWidth]
    records: list[ValueRecord]
    accumulator_bounds: str = "observed"
    op_settings: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    n_samples: int = 0

    @property
    def worst_case(self) -> bool:
        """Whether the circuit is hinted with the worst-case ranges."""
        return self.accumulator_bounds == "worst_case"

    @property
    def predicted_max_bit_width(self) -> int:
        """``circuit.graph.maximum_integer_bit_width()`` of the compiled module."""
        return max((r.width(self.worst_case) for r in self.records), default=-1)

    @property
    def observed_max_bit_width(self) -> int:
        """Max width with inputset bounds only."""
        return max((r.bits for r in self.records), default=-1)

    @property
    def worst_case_max_bit_width(self) -> int:
        """Max width with worst-case bounds (the bit cost of accumulator_bounds="worst_case")."""
        return max((r.width(True) for r in self.records), default=-1)

    def row(self, name: str) -> OpBitWidth:
        """The row of one op.

        Args:
            name: the op's output tensor name (the key of ``quant_layers_dict``) or its ONNX
                node name.

        Returns:
            Its OpBitWidth.
        """
        for r in self.rows:
            if r.name == name:
                return r
        for r in self.rows:
            if r.node and r.node == name:
                return r
        raise KeyError(f"no op named {name!r} in the report; ops: {[r.label for r in self.rows]}")

    def __str__(self) -> str:
        head = (
            "op",
            "type",
            "observed range",
            "bits",
            "worst-case range",
            "bits",
            "TLU in",
        )
        lines = [head]
        for r in self.rows:
            tlu = "-"
            if r.feeds_tlu:
                tlu = str(r.wc_tlu_input_bits if self.worst_case else r.tlu_input_bits)
            lines.append(
                (
                    r.label,
                    r.op_type,
                    f"[{r.lo}, {r.hi}]",
                    str(r.bits),
                    f"[{r.wc_lo}, {r.wc_hi}]",
                    str(r.wc_bits),
                    tlu,
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
        out.insert(1, "  ".join("-" * w for w in widths))
        for r in self.rows:
            if r.product_bits:
                out.append(
                    f"encrypted product in {r.label!r} ({r.op_type}): concrete computes it with "
                    f"two table lookups of {r.product_operand_bits}-bit inputs (x+y, x-y: "
                    f"the widest operand + 1) and {r.product_bits}-bit outputs"
                )
        out.append(
            f"predicted max bit width: {self.predicted_max_bit_width} "
            f"(observed {self.observed_max_bit_width}, worst case "
            f"{self.worst_case_max_bit_width}; accumulator_bounds={self.accumulator_bounds!r})"
        )
        return "\n".join(out)


def _qvalues_of(result: Any) -> Any:
    q = getattr(result, "qvalues", result)
    arr = np.asarray(q) if q is not None else None
    if arr is None or arr.dtype.kind not in "iu":
        return None
    return arr


def analyse(
    forward: Callable[..., Any],
    ops: Sequence[tuple[str, Any]],
    q_inputs: Sequence[np.ndarray],
    input_ranges: Sequence[tuple[int, int]] | None = None,
    accumulator_bounds: str = "observed",
) -> BitWidthReport:
    """Run the clear forward over the whole inputset and record every integer node.

    Args:
        forward: the integer forward (quantized inputs -> outputs), run on numpy arrays; it
            runs each op through ``run_op(name, op, ...)`` so that nodes and results are
            filed under the op's name (nodes outside any op are filed under "<module>").
        ops: (name, op) pairs in execution order; each op has a ``q_impl`` method.
        q_inputs: the compile inputset, one int64 array per input (all rows).
        input_ranges: the integer range of each input (its quantizer's clip bounds), or None
            for the whole integer type of the observed values.
        accumulator_bounds: "observed" or "worst_case".

    Returns:
        The BitWidthReport.
    """
    if accumulator_bounds not in ("observed", "worst_case"):
        raise ConfigurationError(
            f"accumulator_bounds={accumulator_bounds!r} is not supported; use 'observed' or "
            "'worst_case'"
        )
    executor = recording_executor()
    rec = executor.observer
    assert isinstance(rec, RecordingObserver)  # for mypy: recording_executor's observer
    arrays = [np.asarray(q, dtype=np.int64) for q in q_inputs]
    for i, q in enumerate(arrays):
        lo, hi = observed_range(q)
        rec.records.append(ValueRecord(MODULE, f"input {i}", lo, hi, elements=int(q.size)))
        if input_ranges is not None:
            rec.set_worst(q, *input_ranges[i])
    op_types = {name: type(op).__name__ for name, op in ops}
    with use_executor(executor):
        results = forward(*arrays)
    outputs = rec.outputs
    for k, out in enumerate(results if isinstance(results, tuple) else (results,)):
        q_out = _qvalues_of(out)
        if q_out is not None:  # the circuit outputs are nodes too (e.g. a lone TLU)
            rec.records.append(
                ValueRecord(MODULE, f"output {k}", *observed_range(q_out), elements=q_out.size)
            )
    by_op: dict[str, list[ValueRecord]] = {}
    for r in rec.records:
        by_op.setdefault(r.op, []).append(r)
    for name, op in ops:
        recs = by_op.get(name, [])
        is_mixing = bool(getattr(op, "is_mixing", False))
        feeds = is_mixing and not bool(getattr(op, "produces_graph_output", False))
        if feeds:
            computed = [r for r in recs if r.label != "constant"]
            if computed:
                computed[-1].feeds_tlu = True
        out = outputs.get(name)
        # a raw result (shape arithmetic of the legacy attention export, batch * heads) is
        # computed in the clear, not by the circuit: not an integer node
        q_op = _qvalues_of(out) if hasattr(out, "qvalues") else None
        if q_op is not None and feeds:
            lo, hi = observed_range(q_op)
            rec.records.append(
                ValueRecord(name, "output", lo, hi, *type_range(lo, hi), elements=q_op.size)
            )
            by_op.setdefault(name, []).append(rec.records[-1])
    worst = accumulator_bounds == "worst_case"
    rows = [
        _op_row(name, op_types[name], by_op[name], worst, str(getattr(op, "op_instance_name", "")))
        for name, op in ops
        if by_op.get(name)
    ]
    settings: dict[str, tuple[int | None, int | None]] = {}
    for name, op in ops:
        opts = getattr(op, "input_quant_opts", None)
        rtb = getattr(op, "rounding_threshold_bits", None)
        settings[name] = (
            getattr(opts, "n_bits", None),
            int(rtb["n_bits"]) if isinstance(rtb, dict) else None,
        )
    n_samples = int(arrays[0].shape[0]) if arrays and arrays[0].ndim else 1
    return BitWidthReport(rows, rec.records, accumulator_bounds, settings, n_samples)


def check_tlu_bit_widths(report: BitWidthReport) -> None:
    """Raise BitWidthError if a table-lookup input is wider than 16 bits (docs/contract.md §7).

    Args:
        report: the module's BitWidthReport.

    Raises:
        BitWidthError: naming each op at fault, its width and the smallest fix.
    """
    problems = []
    for row in report.rows:
        bits = row.wc_tlu_input_bits if report.worst_case else row.tlu_input_bits
        if not row.feeds_tlu or bits <= MAX_TLU_BIT_WIDTH:
            continue
        n_bits, threshold = report.op_settings.get(row.name, (None, None))
        excess = bits - MAX_TLU_BIT_WIDTH
        fix = "set rounding_threshold_bits (2..8, e.g. 8) to round the accumulator"
        if threshold is not None:
            fix = f"lower rounding_threshold_bits below {threshold}"
        step = math.ceil(excess / 2)
        if n_bits is not None:
            fix += (
                f", or lower n_bits by {step} (op inputs and weights {n_bits} -> "
                f"{max(n_bits - step, 2)} bits)"
            )
        else:
            fix += f", or lower the op input and weight n_bits by {step}"
        problems.append(
            f"op {row.label!r} ({row.op_type}): its table-lookup input needs {bits} bits "
            f"(range [{row.lo}, {row.hi}]), over the {MAX_TLU_BIT_WIDTH}-bit limit; {fix}"
        )
    if problems:
        raise BitWidthError("the module cannot be compiled to FHE:\n  " + "\n  ".join(problems))


#: Widest table-lookup input after an encrypted x encrypted product for which concrete
#: finds crypto parameters at the default p_error (measured with concrete-python 2.11: a
#: Mul with a 14-bit product before its output lookup compiles, a 15-bit one ends in
#: NoParametersFound; see ``check_encrypted_products``).
MAX_ENCRYPTED_PRODUCT_BITS = 14


def check_encrypted_products(
    report: BitWidthReport, max_product_bits: int = MAX_ENCRYPTED_PRODUCT_BITS
) -> None:
    """Raise BitWidthError before compiling when an encrypted x encrypted product cannot get
    crypto parameters.

    concrete computes x·y (two encrypted integers) as ⌊(x+y)²/4⌋ - ⌊(x-y)²/4⌋: both
    operands are widened to the widest operand + 1 bits (x+y and x-y must fit) and each
    square is a table lookup of that width (at most 16 bits: concrete refuses wider
    operands) whose output has the product's width. A product alone compiles up to 16
    bits, but in a module the product is quantized by a table lookup of its (rounded) value,
    and with the product's own lookups in the same circuit concrete finds no parameters
    beyond ``max_product_bits`` bits at p_error 2**-40.

    Args:
        report: the module's BitWidthReport.
        max_product_bits: the widest product table-lookup input allowed.

    Raises:
        BitWidthError: naming each op at fault, its widths and a change that fits.
    """
    problems = []
    for row in report.rows:
        if not row.product_bits:
            continue
        tlu_in = row.wc_tlu_input_bits if report.worst_case else row.tlu_input_bits
        over_in = row.product_operand_bits > MAX_TLU_BIT_WIDTH
        over_out = row.feeds_tlu and tlu_in > max_product_bits
        if not (over_in or over_out):
            continue
        n_bits, threshold = report.op_settings.get(row.name, (None, None))
        target = max(min(max_product_bits // 2, MAX_TLU_BIT_WIDTH - 1), 2)
        lower = (
            f"lower the op input n_bits from {n_bits} to {target}"
            if n_bits is not None and n_bits > target
            else f"lower the n_bits of the op inputs to {target}"
        )
        lower += f" (a product of two {target}-bit values has at most {2 * target} bits)"
        if over_in:
            problem = (
                f"its operands need {row.product_operand_bits} bits (the widest operand + 1), "
                f"over concrete's {MAX_TLU_BIT_WIDTH}-bit limit for encrypted products"
            )
            fix = lower
        else:
            problem = (
                f"its {tlu_in}-bit product is the input of the output table lookup, over the "
                f"{max_product_bits} bits concrete finds crypto parameters for next to the "
                "product's own lookups"
            )
            rounding = (
                f"lower rounding_threshold_bits from {threshold} to {max_product_bits} or less"
                if threshold is not None
                else f"set rounding_threshold_bits <= {max_product_bits} (e.g. 8)"
            )
            fix = f"{rounding} to round the product before its table lookup, or {lower}"
        problems.append(
            f"op {row.label!r} ({row.op_type}): its encrypted x encrypted product needs "
            f"{row.product_bits} bits, computed by concrete with table lookups of "
            f"{row.product_operand_bits}-bit inputs; {problem}; {fix}"
        )
    if problems:
        raise BitWidthError(
            "the module cannot be compiled to FHE (concrete would find no crypto parameters):"
            "\n  " + "\n  ".join(problems)
        )
