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
    """

    op: str
    kind: str
    bits: int
    count: int


def _bits(value: Any) -> int:
    return int(getattr(value.dtype, "bit_width", 0) or 0)


def _per_row(shape: Any, rows: int) -> int:
    return int(np.prod(shape)) // max(rows, 1) if len(shape) else 1


def _is_plain_tlu(node: Any) -> bool:
    name = node.properties.get("name")
    return bool(node.converted_to_table_lookup) and name not in ("round_bit_pattern", "maxpool2d")


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
                out.append(Lookup(own, "round", _bits(node.inputs[0]), per * size))
        elif name == "maxpool2d":
            taps = int(np.prod(node.properties.get("kwargs", {}).get("kernel_shape", (1,))))
            out.append(Lookup(own, "maxpool", _bits(node.inputs[0]), taps * size))
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
            out.append(Lookup(op, "tlu", width, size))
        elif name in ("multiply", "matmul") and len(enc_inputs) == 2:
            width = max(_bits(v) for v in enc_inputs) + 1
            scalars = size
            if name == "matmul":
                scalars = size * int(enc_inputs[0].shape[-1])
            out.append(Lookup(own, "product", width, 2 * scalars))
    return out
