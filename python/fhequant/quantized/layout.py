"""The consistency check of a QuantizedModule's graph arguments (input names, output names
and layers), run when a module is constructed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhequant.errors import GraphInputError

__all__ = ["check_module_layout"]


def check_module_layout(
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    layers: dict[str, tuple[tuple[str, ...], Any]] | None,
) -> None:
    """The three graph arguments are all given or all left out, and agree: every layer reads
    module inputs or earlier layers' outputs, and every output is a layer's.

    Args:
        input_names: the module's input names.
        output_names: the module's output names.
        layers: output name -> (variable input names, op), in execution order.

    Raises:
        GraphInputError: some but not all given, or names that do not connect.
    """
    given = [bool(v) for v in (input_names, output_names, layers)]
    if any(given) and not all(given):
        raise GraphInputError(
            "QuantizedModule: give ordered_module_input_names, ordered_module_output_names and "
            "quant_layers_dict together (all three, or none for an empty module to load into)"
        )
    if not (input_names and output_names and layers):
        return
    known = set(input_names)
    for name, layer in layers.items():
        if not (isinstance(layer, tuple) and len(layer) == 2):
            raise GraphInputError(
                f"QuantizedModule: quant_layers_dict[{name!r}] must be a pair (variable input "
                f"names, quantized op), got {type(layer).__name__}"
            )
        missing = [i for i in layer[0] if i not in known]
        if missing:
            raise GraphInputError(
                f"QuantizedModule: layer {name!r} reads {missing}, which are neither module "
                f"inputs {list(input_names)} nor outputs of the layers before it"
            )
        known.add(name)
    unknown = [o for o in output_names if o not in layers]
    if unknown:
        raise GraphInputError(
            f"QuantizedModule: outputs {unknown} are not produced by any layer of quant_layers_dict"
        )
