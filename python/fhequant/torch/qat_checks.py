"""Warnings about Brevitas models that Brevitas did not fully quantize (issue 15).

A Brevitas model whose first layer, or one branch of an Add/Concat, is not preceded by a
QuantIdentity has float values there; fhequant then quantizes them post-training, so its
outputs differ from the Brevitas model's. The QONNX export shows this as a graph input, or
an Add/Concat operand, that reaches its consumer without passing through a Quant node.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

from fhequant.errors import BrevitasImportWarning

__all__ = ["warn_unquantized_entries"]

#: Ops that move values without changing them: a Quant before them still quantizes after.
_PASS_THROUGH = frozenset(
    {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast"}
)
_MERGING = frozenset({"Add", "Sub", "Concat"})


def _label(node: Any) -> str:
    return f"{node.name or node.output[0]!r} ({node.op_type})"


def warn_unquantized_entries(model: Any) -> list[str]:
    """Warn (BrevitasImportWarning) for each layer that receives unquantized float values.

    Args:
        model: the exported QONNX ModelProto.

    Returns:
        The messages warned (empty when every entry is quantized).
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def from_quant(tensor: str) -> bool:
        """Whether ``tensor`` is a Quant output, possibly moved by pass-through ops; False
        for a graph input."""
        node = producers.get(tensor)
        while node is not None and node.op_type in _PASS_THROUGH and node.input:
            node = producers.get(node.input[0])
        return node is not None and node.op_type == "Quant"

    messages: list[str] = []
    for graph_input in graph.input:
        if graph_input.name in initializers:
            continue
        pending = [graph_input.name]
        while pending:
            tensor = pending.pop()
            for node in consumers.get(tensor, []):
                if node.op_type in _PASS_THROUGH:
                    pending.extend(node.output)
                elif node.op_type != "Quant":
                    messages.append(
                        f"Brevitas import: model input {graph_input.name!r} reaches layer "
                        f"{_label(node)} without a QuantIdentity, so fhequant quantizes it "
                        "post-training and the results differ from Brevitas; add "
                        "brevitas.nn.QuantIdentity(bit_width=..., return_quant_tensor=True) "
                        "before that layer"
                    )
    for node in graph.node:
        if node.op_type not in _MERGING:
            continue
        for operand in node.input:
            if operand in initializers or not operand or from_quant(operand):
                continue
            if operand not in producers:  # a graph input: reported above
                continue
            messages.append(
                f"Brevitas import: operand {operand!r} of {_label(node)} is not quantized by "
                "Brevitas (no QuantIdentity on that branch); fhequant quantizes it "
                "post-training and the results differ from Brevitas; add a "
                "brevitas.nn.QuantIdentity on each branch before the merge"
            )
    for message in messages:
        warnings.warn(message, BrevitasImportWarning, stacklevel=3)
    return messages
