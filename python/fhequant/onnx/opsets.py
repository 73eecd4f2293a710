"""Reading every ONNX opset from 1 to the newest the installed onnx defines (issue 13).

fhequant implements the default-domain ops of opsets 13 to 21. A model outside that range is
converted with ``onnx.version_converter`` (older ones up to 13, newer ones down to 21); when
the converter has no adapter, a newer model whose ops kept their inputs, outputs and
attributes (only types were added) is relabelled to 21 if its types are allowed there. What
can be neither raises ``OpsetError`` naming the op and the opset.
"""

from __future__ import annotations

import re
from typing import Any

import onnx
from onnx import version_converter

from fhequant.errors import OpsetError
from fhequant.onnx._proto import DEFAULT_DOMAINS, default_opset

__all__ = [
    "MAX_OPSET",
    "MIN_OPSET",
    "NATIVE_MAX_OPSET",
    "NATIVE_MIN_OPSET",
    "check_opset",
    "convert_opset",
]

MIN_OPSET = 1
MAX_OPSET = int(onnx.defs.onnx_opset_version())
NATIVE_MIN_OPSET = 13
NATIVE_MAX_OPSET = 21
# IR 3 (ONNX 1.0-1.2) requires every initializer to be a graph input; IR 4 lifted that rule
_IR_INITIALIZERS_OPTIONAL = 4


def check_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset, which must be in [MIN_OPSET, MAX_OPSET] (1 to the newest).

    Raises:
        OpsetError: no default opset, or one outside the readable range.
    """
    opset = default_opset(model)
    if opset is None:
        raise OpsetError("the model imports no default ONNX opset (domain ''): cannot run it")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        newer = (
            f"; opset {opset} is newer than the installed onnx {onnx.__version__} knows: "
            "upgrade onnx"
            if opset > MAX_OPSET
            else ""
        )
        raise OpsetError(
            f"ONNX opset {opset} is not supported: fhequant reads opsets {MIN_OPSET} to "
            f"{MAX_OPSET}{newer}; re-export the model at an opset from {NATIVE_MIN_OPSET} to "
            f"{NATIVE_MAX_OPSET}"
        )
    return opset


def _changed_ops(model: onnx.ModelProto, source: int, target: int) -> list[str]:
    """Default-domain op types of the model whose definition differs between two opsets."""
    changed = set()
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            continue
        versions: list[int | None] = []
        for opset in (source, target):
            try:
                versions.append(onnx.defs.get_schema(node.op_type, opset, "").since_version)
            except Exception:  # not defined at that opset
                versions.append(None)
        if versions[0] != versions[1]:
            changed.add(node.op_type)
    return sorted(changed)


def _signature(schema: Any, implemented: frozenset[str]) -> tuple[Any, ...]:
    """An op schema's inputs, outputs and attributes, without its type constraints and
    without the attributes fhequant's implementation of the op reads whatever the opset
    (Cast's round_mode, Range's stash_type)."""
    return (
        tuple((i.name, i.option) for i in schema.inputs),
        tuple((o.name, o.option) for o in schema.outputs),
        tuple(
            sorted(
                (a.name, a.type, a.required)
                for a in schema.attributes.values()
                if a.name not in implemented
            )
        ),
    )


def _implemented_attrs(op_type: str) -> frozenset[str]:
    from fhequant.onnx.registry import ONNX_OPS  # the op families register on import

    spec = ONNX_OPS.get(op_type)
    return frozenset(spec.attrs) if spec is not None else frozenset()


def _relabel_down(model: onnx.ModelProto, source: int, target: int) -> onnx.ModelProto | None:
    """The model at ``target`` (or at its own opset when it sets an attribute newer than
    ``target``) when every op's signature is the same at both opsets, apart
    from attributes fhequant implements (newer opsets often only add types, and the converter
    lacks some of those adapters, e.g. GlobalMaxPool 22 -> 21), else None.

    Types a newer opset added (float16 Celu, int2 Cast) are kept: fhequant's ops compute in the
    input's numpy type, and refuse with a typed error the types numpy has no arithmetic for."""
    if source <= target:
        return None
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            continue
        try:
            old = onnx.defs.get_schema(node.op_type, source, "")
            new = onnx.defs.get_schema(node.op_type, target, "")
        except Exception:  # not defined at one of the opsets
            return None
        implemented = _implemented_attrs(node.op_type)
        if old.since_version != new.since_version and _signature(old, implemented) != _signature(
            new, implemented
        ):
            return None
    try:  # a valid file at its own opset (attributes such as round_mode are not valid at 21)
        onnx.checker.check_model(model)
    except Exception:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for op in out.opset_import:
        if op.domain in DEFAULT_DOMAINS:
            op.version = target
    out.ir_version = max(out.ir_version, _IR_INITIALIZERS_OPTIONAL)
    try:
        onnx.checker.check_model(out)
    except Exception:  # a newer attribute in use (Cast round_mode): keep the model's own opset
        model.ir_version = out.ir_version
        return model
    return out


def convert_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model at an opset fhequant implements (13 to 21), converted when needed.

    Opsets below 13 are converted up to 13, opsets above 21 down to 21, with
    ``onnx.version_converter`` (when it has no adapter, a model whose ops have the same
    inputs, outputs and attributes at both opsets, with types allowed at 21, is relabelled);
    the IR version is raised to 4 at least (IR 3 files list
    every initializer as a graph input, which the pre-processing removes).

    Raises:
        OpsetError: an opset outside [MIN_OPSET, MAX_OPSET], or a model the converter cannot
            bring to 13-21 (the message names the ops concerned).
    """
    opset = check_opset(model)
    if model.ir_version < _IR_INITIALIZERS_OPTIONAL:
        model.ir_version = _IR_INITIALIZERS_OPTIONAL
    if NATIVE_MIN_OPSET <= opset <= NATIVE_MAX_OPSET:
        return model
    target = NATIVE_MIN_OPSET if opset < NATIVE_MIN_OPSET else NATIVE_MAX_OPSET
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:
        relabelled = _relabel_down(model, opset, target)
        if relabelled is not None:
            return relabelled
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        named = re.findall(r"operator '(\w+)'|for (\w+)\s*$", text)
        ops = sorted({a or b for a, b in named}) or _changed_ops(model, opset, target)
        raise OpsetError(
            f"the ONNX model at opset {opset} cannot be converted to opset {target} "
            f"(op {', '.join(ops) or '?'}: {text}); fhequant implements opsets "
            f"{NATIVE_MIN_OPSET} to {NATIVE_MAX_OPSET}: re-export the model at one of them or "
            "replace the op"
        ) from exc
    converted.ir_version = max(converted.ir_version, _IR_INITIALIZERS_OPTIONAL)
    return converted
