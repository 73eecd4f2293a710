"""The programmable bootstraps (PBS) of a traced circuit, counted before compiling.

concrete-python turns a traced graph into MLIR and lowers every table lookup to one PBS per
element; a few operations cost more than one. :func:`count_lookups` walks the fused graph
(``Compiler.trace``: cheap, no crypto parameters, no keys) and applies concrete's lowering
rules, measured against ``circuit.programmable_bootstrap_count`` with concrete-python 2.11
(tests/fhe/test_cost.py checks them on every compiled test model):

* a table lookup (a fused float subgraph, ``fhe.univariate``, a copy): one PBS per element,
  at the width of its input; a lookup whose input is the result of another lookup used by
  nothing else is composed with it into one table (MLIR folds the pair);
* ``round_bit_pattern`` removing k bits: k PBS per element (exact); approximate rounding is
  done by the next lookup's modulus switch, free without overflow protection (fhequant's
  setting), else 1 PBS per element. The steps are filed at the width of the value before
  rounding (the lookup after it gets the rounded width);
* an encrypted x encrypted product: two PBS per scalar product (⌊(x±y)²/4⌋), at the width of
  the widest operand + 1;
* ``maxpool``: one PBS per window tap and output element.

Each lookup is filed under the op (``fhe.tag``, set by the tracing executor) whose value it
reads: the table after a Gemm belongs to the Gemm even when the next op's code applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KINDS", "Lookup", "count_lookups"]

#: The kinds of PBS: table lookups, rounding steps, product squares, max-pool comparisons.
KINDS = ("tlu", "round", "product", "maxpool")

_MODULE = "<module>"


@dataclass(frozen=True)
class Lookup:
    """PBS of one graph node, for one sample.

    Attributes:
        op: the op name (the tag of the node that produced the looked-up value).
        kind: one of :data:`KINDS`.
        bits: input width of the PBS (the width concrete gives the looked-up value).
        count: PBS per sample.
        log_norm: log2 of the noise variance factor of the PBS input: the sum of the squared
            weights carrying earlier PBS outputs and the inputs into it (0: one of them). concrete
            sizes a partition's crypto parameters for its noisiest input.
    """

    op: str
    kind: str
    bits: int
    count: int
    log_norm: float = 0.0


def _bits(value: Any) -> int:
    return int(getattr(value.dtype, "bit_width", 0) or 0)


def _per_row(shape: Any, rows: int) -> int:
    return int(np.prod(shape)) // max(rows, 1) if len(shape) else 1


def _is_plain_tlu(node: Any) -> bool:
    name = node.properties.get("name")
    return bool(node.converted_to_table_lookup) and name not in ("round_bit_pattern", "maxpool2d")


_PBS_OUT = ("maxpool2d",)
_SUMMING = ("add", "subtract")
_SAME = ("negative", "reshape", "transpose", "index_static", "concatenate", "broadcast_to",
         "expand_dims", "squeeze", "flatten", "copy", "pad", "assign_static")  # fmt: skip


def _constant(node: Any) -> np.ndarray | None:
    if node.operation.name != "Constant":
        return None
    try:
        return np.asarray(node(), dtype=np.float64)
    except Exception:  # pragma: no cover - not a numeric constant
        return None


def _weight_factor(name: str, node: Any, preds: list[Any], variance: dict[int, float]) -> float:
    """The variance factor of a linear node's output from its encrypted input's."""
    enc = [i for i, p in enumerate(preds) if p.output.is_encrypted]
    consts = [_constant(p) for p in preds]
    v_in = max((variance.get(id(preds[i]), 0.0) for i in enc), default=0.0)
    if name in _SUMMING:
        return sum(variance.get(id(preds[i]), 0.0) for i in enc)
    if name == "sum":
        size_in = int(np.prod(preds[0].output.shape)) if preds[0].output.shape else 1
        size_out = int(np.prod(node.output.shape)) if node.output.shape else 1
        return v_in * max(size_in // max(size_out, 1), 1)
    other = next((c for i, c in enumerate(consts) if i not in enc and c is not None), None)
    if other is None:
        return v_in
    sq = other**2
    if name == "multiply":
        return v_in * float(sq.max(initial=0.0))
    if name in ("matmul", "dot"):
        axis = 0 if enc and enc[0] == 0 else -1  # x @ W sums W's rows; W @ x its columns
        return v_in * float(sq.sum(axis=axis if sq.ndim > 1 else None).max(initial=0.0))
    if name.startswith("conv"):
        return v_in * float(sq.reshape(sq.shape[0], -1).sum(axis=1).max(initial=0.0))
    return v_in


def _makes_pbs(node: Any, name: Any, enc_preds: list[Any]) -> bool:
    """Whether a node's output is a PBS output (a lookup, a max pool, an encrypted product)."""
    if node.converted_to_table_lookup or name in _PBS_OUT:
        return True
    return name in ("multiply", "matmul") and len(enc_preds) == 2


def _variances(graph: Any, nodes: list[Any]) -> dict[int, float]:
    """Per node, the noise variance factor of its output (the max over elements): 1 after a
    PBS or for a fresh encryption (concrete gives inputs a PBS output's noise), sums of
    squared weights through linear nodes."""
    out: dict[int, float] = {}
    for node in nodes:
        name = node.properties.get("name")
        preds = graph.ordered_preds_of(node)
        enc_preds = [p for p in preds if p.output.is_encrypted]
        if not node.output.is_encrypted:
            out[id(node)] = 0.0
        elif _makes_pbs(node, name, enc_preds) or node.operation.name == "Input":
            out[id(node)] = 1.0
        elif name == "round_bit_pattern":
            lsbs = int(node.properties.get("kwargs", {}).get("lsbs_to_remove", 0))
            out[id(node)] = out.get(id(preds[0]), 0.0) / 4.0**lsbs
        elif name is None or name in _SAME:
            out[id(node)] = max((out.get(id(p), 0.0) for p in enc_preds), default=0.0)
        else:
            out[id(node)] = _weight_factor(name, node, preds, out)
    return out


def _log(v: float) -> float:
    return float(np.log2(v)) if v > 0 else -1.0


def count_lookups(graph: Any, rows: int) -> list[Lookup]:
    """The PBS of a traced concrete graph, node by node.

    Args:
        graph: a fused ``concrete.fhe`` Graph with bounds (``Compiler.trace``).
        rows: the number of samples the graph was traced with as one batch (the leading
            axis of every computed node), 1 for a batch-1 trace.

    Returns:
        One Lookup per node that costs PBS, in graph order.
    """
    nodes = graph.query_nodes(ordered=True)
    folded: set[int] = set()
    for node in nodes:
        if not _is_plain_tlu(node):
            continue
        preds = graph.ordered_preds_of(node)
        enc = [p for p in preds if p.output.is_encrypted]
        if len(enc) == 1 and _is_plain_tlu(enc[0]) and len(graph.graph.succ[enc[0]]) == 1:
            folded.add(id(enc[0]))
    variance = _variances(graph, nodes)
    out: list[Lookup] = []
    for node in nodes:
        name = node.properties.get("name")
        size = _per_row(node.output.shape, rows)
        own = node.tag or _MODULE
        enc_inputs = [v for v in node.inputs if v.is_encrypted]
        if name == "round_bit_pattern":
            kwargs = node.properties.get("kwargs", {})
            exact = "APPROX" not in str(kwargs.get("exactness"))
            lsbs = int(kwargs.get("lsbs_to_remove", 0))
            per = lsbs if exact else int(bool(kwargs.get("overflow_protection", True)))
            if lsbs > 0 and per > 0:
                v = variance.get(id(graph.ordered_preds_of(node)[0]), 0.0)
                out.append(Lookup(own, "round", _bits(node.inputs[0]), per * size, _log(v)))
        elif name == "maxpool2d":
            taps = int(np.prod(node.properties.get("kwargs", {}).get("kernel_shape", (1,))))
            v = 2 * variance.get(id(graph.ordered_preds_of(node)[0]), 0.0)
            out.append(Lookup(own, "maxpool", _bits(node.inputs[0]), taps * size, _log(v)))
        elif node.converted_to_table_lookup:
            if id(node) in folded:
                continue
            preds = [p for p in graph.ordered_preds_of(node) if p.output.is_encrypted]
            source = preds[0] if preds else node
            if source is not node and id(source) in folded:  # the composed pair
                inner = [p for p in graph.ordered_preds_of(source) if p.output.is_encrypted]
                source = inner[0] if inner else source
            op = source.tag or own
            width = _bits(node.inputs[0])
            if source.properties.get("name") == "round_bit_pattern":  # the rounded width
                width = _bits(source.inputs[0]) - int(source.properties["kwargs"]["lsbs_to_remove"])
            elif source is not node:
                width = _bits(source.output)
            v = variance.get(id(source), 0.0) if source is not node else 0.0
            out.append(Lookup(op, "tlu", width, size, _log(v)))
        elif name in ("multiply", "matmul") and len(enc_inputs) == 2:
            width = max(_bits(v) for v in enc_inputs) + 1
            scalars = size
            if name == "matmul":
                scalars = size * int(enc_inputs[0].shape[-1])
            v = sum(variance.get(id(p), 0.0) for p in graph.ordered_preds_of(node))
            out.append(Lookup(own, "product", width, 2 * scalars, _log(v)))
    return out
