"""Loading and pre-processing of ONNX models (docs/contract.md §5.1).

Steps, in order: parse, opset check and conversion (``fhequant.onnx.opsets``: opsets 1 to the
newest the installed onnx defines are read; those outside 13-21 are converted to 13 or 21),
onnx.checker, unsupported-op check, Constant nodes → initializers, folding of constant-only
subgraphs (Brevitas Quant excluded: the QAT importer needs those nodes), folding of shape
arithmetic on a dynamic batch axis (``x.view(x.size(0), -1)`` → Reshape to ``[0, -1]``), no-op
Pad removal, Pad fused into Conv, MatMul + Add(initializer) → Gemm, unused initializer
removal, Gather on a graph input → one-hot MatMul, and a final check.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

import fhequant.onnx.ops  # noqa: F401  (importing the families fills the registry)
from fhequant.errors import FhequantError, OnnxImportError, UnsupportedOpError
from fhequant.onnx._proto import (
    DEFAULT_DOMAINS,
    from_array,
    node_attrs,
    node_label,
    op_key,
    to_array,
)
from fhequant.onnx.opsets import (
    convert_opset,
)
from fhequant.onnx.registry import ONNX_OPS

PREPROCESSING_OPSET = 14
QUANT_OPS = frozenset({"onnx.brevitas.Quant", "qonnx.custom_op.general.Quant"})


def load_model(model: Any) -> onnx.ModelProto:
    """Read a model given as a ModelProto, serialized bytes or a file path.

    Args:
        model: ``onnx.ModelProto``, ``bytes`` or a path.

    Returns:
        A copy of the model (the caller's proto is never modified).

    Raises:
        OnnxImportError: bytes or a file that do not parse as an ONNX model.
    """
    if isinstance(model, onnx.ModelProto):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    if isinstance(model, (bytes, bytearray, memoryview)):
        try:
            return onnx.load_model_from_string(bytes(model))
        except Exception as exc:
            raise OnnxImportError(f"the bytes given are not an ONNX model: {exc}") from exc
    if isinstance(model, (str, os.PathLike)):
        if not os.path.isfile(model):
            raise OnnxImportError(f"ONNX file {os.fspath(model)!r} does not exist")
        try:
            return onnx.load(os.fspath(model))
        except Exception as exc:
            raise OnnxImportError(f"{os.fspath(model)!r} is not an ONNX model: {exc}") from exc
    raise OnnxImportError(
        f"cannot read an ONNX model from a {type(model).__name__}: pass an onnx.ModelProto, "
        "serialized bytes or a file path"
    )


def check_model(model: onnx.ModelProto, when: str) -> None:
    """Run onnx.checker, raising OnnxImportError with ``when`` in the message."""
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise OnnxImportError(f"the ONNX model {when} fails onnx.checker: {exc}") from exc


#: Rewrites of unsupported ops in terms of supported ones (shown in UnsupportedOpError).
WORKAROUNDS = {
    "ReduceL2": "write it as Sqrt(ReduceSum(Mul(x, x))), e.g. torch.sqrt((x * x).sum(dim))",
    "ReduceL1": "write it as ReduceSum(Abs(x))",
    "ReduceSumSquare": "write it as ReduceSum(Mul(x, x))",
    "ReduceLogSumExp": "write it as Log(ReduceSum(Exp(x)))",
    "LpNormalization": "divide x by Sqrt(ReduceSum(Mul(x, x))) over the axis",
    "Dropout": "export the model in eval mode (model.eval()) so Dropout disappears",
}


def _workaround(op_type: str) -> str:
    hint = WORKAROUNDS.get(op_type.split(".")[-1])
    if hint is not None:
        return f" [workaround: {hint}]"
    close = difflib.get_close_matches(op_type, list(ONNX_OPS), n=3, cutoff=0.75)
    return f" [did you mean {', '.join(close)}?]" if close else ""


def check_supported(model: onnx.ModelProto) -> None:
    """Raise UnsupportedOpError listing every unsupported op type with its nodes."""
    bad: dict[str, list[str]] = {}
    for i, node in enumerate(model.graph.node):
        key = op_key(node)
        if key not in ONNX_OPS:
            bad.setdefault(key, []).append(node_label(node, i))
    if bad:
        listing = "; ".join(
            f"{k} (nodes {', '.join(map(repr, v))}){_workaround(k)}" for k, v in sorted(bad.items())
        )
        raise UnsupportedOpError(
            f"unsupported ONNX op types: {listing}. The {len(ONNX_OPS)} supported op types "
            "are listed in fhequant.onnx.SUPPORTED_OPS"
        )


def _import_custom_domains(model: onnx.ModelProto) -> None:
    """Add a version-1 opset import for node domains the model uses but does not import.

    Brevitas/QONNX exports sometimes omit the import of their Quant domain; onnx.checker
    would reject the model for that alone.
    """
    imported = {op.domain for op in model.opset_import}
    for node in model.graph.node:
        if node.domain not in imported and node.domain not in DEFAULT_DOMAINS:
            model.opset_import.append(helper.make_opsetid(node.domain, 1))
            imported.add(node.domain)


@dataclass
class Preprocessed:
    """The result of ``preprocess``.

    Attributes:
        model: the pre-processed graph.
        initializers: its initializers as numpy arrays.
        preprocessing: the one-hot pre-processing graph (None when no Gather was rewritten).
    """

    model: onnx.ModelProto
    initializers: dict[str, np.ndarray]
    preprocessing: onnx.ModelProto | None


def preprocess(model: onnx.ModelProto) -> Preprocessed:
    """Run every pre-processing step on a loaded model (see the module docstring).

    Raises:
        OpsetError, UnsupportedOpError, OnnxImportError: see the individual steps.
    """
    try:
        model = convert_opset(model)
        _import_custom_domains(model)
        check_model(model, "as given")
        check_supported(model)
        g = _Graph(model)
        g.fold_constants()
        g.fold_batch_shapes(model)
        g.remove_nop_pads()
        g.fuse_pads_into_conv()
        g.fuse_matmul_add()
        g.remove_unused_initializers()
        pre = g.onehot_gathers(model)
        out = g.to_model(model)
        check_model(out, "after pre-processing")
    except FhequantError:
        raise
    except Exception as exc:  # corrupt protobufs fail in many ways (e.g. non-UTF-8 names)
        raise OnnxImportError(f"the ONNX model cannot be pre-processed: {exc!r}") from exc
    return Preprocessed(out, g.inits, pre)


def _int_init(g: _Graph, name: str) -> list[int] | None:
    if name not in g.inits:
        return None
    return [int(v) for v in np.asarray(g.inits[name]).reshape(-1)]


class _Graph:
    """A mutable view of a graph: node list, initializers as arrays, inputs and outputs."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.name = graph.name
        self.nodes = list(graph.node)
        self.inits: dict[str, np.ndarray] = {t.name: to_array(t) for t in graph.initializer}
        self.inputs = [v for v in graph.input if v.name not in self.inits]
        self.outputs = list(graph.output)
        self.value_info = list(graph.value_info)
        self.output_names = {v.name for v in self.outputs}

    # --- helpers ---------------------------------------------------------------------------

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if name in n.input]

    def rename_uses(self, old: str, new: str) -> None:
        for n in self.nodes:
            for i, inp in enumerate(n.input):
                if inp == old:
                    n.input[i] = new

    # --- passes ----------------------------------------------------------------------------

    def fold_constants(self) -> None:
        """Evaluate nodes whose inputs are all initializers (Constant nodes included)."""
        kept = []
        for i, node in enumerate(self.nodes):
            key = op_key(node)
            ins = [x for x in node.input if x]
            if key in QUANT_OPS or not all(x in self.inits for x in ins):
                kept.append(node)
                continue
            if not ins and key != "Constant":
                kept.append(node)
                continue
            spec = ONNX_OPS[key]
            label = node_label(node, i)
            try:
                attrs = spec.resolve_attrs(node_attrs(node), label, len(node.output))
                args = [self.inits[x] if x else None for x in node.input]
                res = spec.fn(*args, **attrs)
            except FhequantError:
                raise
            except Exception as exc:
                raise OnnxImportError(
                    f"node {label!r} ({key}) fails on its constant inputs: {exc}"
                ) from exc
            results = res if isinstance(res, tuple) else (res,)
            for out_name, value in zip(node.output, results, strict=False):
                if out_name:
                    self.inits[out_name] = np.asarray(value)
        self.nodes = kept

    def fold_batch_shapes(self, model: onnx.ModelProto) -> None:
        """Fold the shape arithmetic a dynamic batch axis leaves behind.

        With shapes inferred by onnx, ``Gather(Shape(t), i)`` of a static dim becomes a
        constant, and ``Reshape(d, Concat(Unsqueeze(Gather(Shape(t), 0)), c...))`` where
        ``t`` and ``d`` share their symbolic batch dim becomes ``Reshape(d, [0, c...])`` (ONNX:
        0 copies the input's dim). Nodes left unused are dropped; anything else is kept.
        """
        # A folded Reshape lets onnx infer the batch dim of what follows: repeat until stable.
        for _ in range(len(self.nodes)):
            if not self._fold_batch_shapes_once(model):
                return

    def _fold_batch_shapes_once(self, model: onnx.ModelProto) -> bool:
        """One round of ``fold_batch_shapes``; True when something was folded."""
        if not any(op_key(n) == "Shape" for n in self.nodes):
            return False
        try:
            inferred = onnx.shape_inference.infer_shapes(self.to_model(model))
        except Exception:  # shapes are only a hint here: without them, fold nothing
            return False
        dims: dict[str, list[Any]] = {}
        for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            if _has_shape(v):
                dims[v.name] = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in _dims(v)
                ]
        shapes: dict[str, tuple[str, list[Any]]] = {}  # Shape output -> (tensor, dims)
        batch_of: dict[str, tuple[str, int]] = {}  # Gather/Unsqueeze output -> (tensor, rank)
        constant: set[int] = set()  # Gather nodes now given by an initializer
        folded = False
        for node in self.nodes:
            key, ins = op_key(node), list(node.input)
            attrs = node_attrs(node)
            if key == "Shape" and ins[0] in dims and "start" not in attrs and "end" not in attrs:
                shapes[node.output[0]] = (ins[0], dims[ins[0]])
            elif key == "Gather" and ins[0] in shapes and attrs.get("axis", 0) == 0:
                tensor, tdims = shapes[ins[0]]
                index = self.inits.get(ins[1])
                if index is None or np.ndim(index) != 0:
                    continue
                i = int(index) + len(tdims) if int(index) < 0 else int(index)
                if not 0 <= i < len(tdims):
                    continue
                if isinstance(tdims[i], int) and tdims[i] > 0:
                    self.inits[node.output[0]] = np.array(tdims[i], dtype=np.int64)
                    constant.add(id(node))
                elif i == 0:
                    batch_of[node.output[0]] = (tensor, 0)
            elif key == "Unsqueeze" and ins[0] in batch_of and len(ins) > 1:
                axes = _int_init(self, ins[1])
                if axes == [0]:
                    batch_of[node.output[0]] = (batch_of[ins[0]][0], 1)
            elif key == "Reshape" and len(ins) > 1 and not attrs.get("allowzero", 0):
                target = self._batch_copying_shape(ins[1], ins[0], dims, batch_of)
                if target is not None:
                    name = f"{node.output[0]}__batch_shape"
                    self.inits[name] = np.array(target, dtype=np.int64)
                    node.input[1] = name
                    folded = True
        if folded or constant:
            self.nodes = [n for n in self.nodes if id(n) not in constant]
            self._drop_dead_nodes()
            self.fold_constants()
        return folded or bool(constant)

    def _batch_copying_shape(
        self,
        shape: str,
        data: str,
        dims: dict[str, list[Any]],
        batch_of: dict[str, tuple[str, int]],
    ) -> list[int] | None:
        """[0, c...] when ``shape`` is Concat(batch of a tensor sharing ``data``'s batch dim,
        constants...) along axis 0, else None."""
        producer = next((n for n in self.nodes if shape in n.output), None)
        if producer is None or op_key(producer) != "Concat":
            return None
        if node_attrs(producer).get("axis") != 0 or not producer.input:
            return None
        first, *rest = producer.input
        source = batch_of.get(first)
        if source is None or source[1] != 1:
            return None
        batch = (dims.get(source[0]) or [None])[0]
        if not isinstance(batch, str) or batch != (dims.get(data) or [None])[0]:
            return None
        tail: list[int] = []
        for part in rest:
            values = _int_init(self, part)
            if values is None or np.ndim(self.inits[part]) != 1:
                return None
            tail.extend(values)
        return [0, *tail]

    def _drop_dead_nodes(self) -> None:
        """Remove nodes (last to first) none of whose outputs is used or a graph output."""
        kept: list[onnx.NodeProto] = []
        used = set(self.output_names)
        for node in reversed(self.nodes):
            if any(o in used for o in node.output if o):
                kept.append(node)
                used.update(x for x in node.input if x)
        self.nodes = kept[::-1]

    def _pads_of(self, node: onnx.NodeProto) -> list[int] | None:
        """Pad node pads (full rank, ONNX order) when given by initializers, else None."""
        if len(node.input) < 2:
            return None
        pads = _int_init(self, node.input[1])
        if pads is None:
            return None
        if len(node.input) > 3 and node.input[3]:
            axes = _int_init(self, node.input[3])
            return None if axes is None or sorted(axes) != list(range(len(axes))) else pads
        return pads

    def remove_nop_pads(self) -> None:
        """Drop Pad nodes whose pads are all zero (unless their output is a graph output)."""
        kept = []
        for node in self.nodes:
            pads = self._pads_of(node) if op_key(node) == "Pad" else None
            if pads is not None and not any(pads) and node.output[0] not in self.output_names:
                self.rename_uses(node.output[0], node.input[0])
                continue
            kept.append(node)
        self.nodes = kept

    def fuse_pads_into_conv(self) -> None:
        """Fold a zero-valued constant Pad of spatial axes into the pads of its Conv consumer."""
        producers = {o: n for n in self.nodes for o in n.output}
        removed: set[int] = set()
        for conv in self.nodes:
            if op_key(conv) != "Conv" or conv.input[0] not in producers:
                continue
            pad = producers[conv.input[0]]
            if op_key(pad) != "Pad" or pad.output[0] in self.output_names:
                continue
            if len(self.consumers(pad.output[0])) != 1:
                continue
            attrs = node_attrs(pad)
            pads = self._pads_of(pad)
            if attrs.get("mode", "constant") != "constant" or pads is None:
                continue
            if len(pad.input) > 2 and pad.input[2]:
                value = self.inits.get(pad.input[2])
                if value is None or np.any(np.asarray(value) != 0):
                    continue
            conv_attrs = node_attrs(conv)
            if conv_attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
                continue
            weight = self.inits.get(conv.input[1])
            kernel = conv_attrs.get("kernel_shape") or (
                weight.shape[2:] if weight is not None else None
            )
            rank = len(pads) // 2
            if kernel is None or rank != len(kernel) + 2:
                continue
            if any(p < 0 for p in pads) or any(pads[a] or pads[a + rank] for a in (0, 1)):
                continue
            nsp = rank - 2
            old = list(conv_attrs.get("pads") or [0] * (2 * nsp))
            new = [old[i] + pads[2 + i] for i in range(nsp)]
            new += [old[nsp + i] + pads[rank + 2 + i] for i in range(nsp)]
            for a in list(conv.attribute):
                if a.name == "pads":
                    conv.attribute.remove(a)
            conv.attribute.append(helper.make_attribute("pads", new))
            conv.input[0] = pad.input[0]
            removed.add(id(pad))
        self.nodes = [n for n in self.nodes if id(n) not in removed]

    def fuse_matmul_add(self) -> None:
        """MatMul whose only consumer is an Add with an initializer operand → Gemm(A, B, C).

        The Gemm takes the Add's place (the later index) and keeps matmul/broadcast semantics
        (fhequant's Gemm accepts more than two axes).
        """
        removed: set[int] = set()
        for mm in self.nodes:
            if op_key(mm) != "MatMul" or mm.output[0] in self.output_names:
                continue
            users = self.consumers(mm.output[0])
            if len(users) != 1 or op_key(users[0]) != "Add":
                continue
            add = users[0]
            others = [x for x in add.input if x != mm.output[0]]
            if len(others) != 1 or others[0] not in self.inits:
                continue
            gemm = helper.make_node(
                "Gemm",
                [mm.input[0], mm.input[1], others[0]],
                list(add.output),
                name=mm.name or add.name,
                alpha=1.0,
                beta=1.0,
            )
            add.CopyFrom(gemm)
            removed.add(id(mm))
        self.nodes = [n for n in self.nodes if id(n) not in removed]

    def remove_unused_initializers(self) -> None:
        used = {x for n in self.nodes for x in n.input} | self.output_names
        self.inits = {k: v for k, v in self.inits.items() if k in used}

    def onehot_gathers(self, model: onnx.ModelProto) -> onnx.ModelProto | None:
        """Gather(table, graph input) → MatMul(one-hot input, table); returns the OneHot graph."""
        rewritten: dict[str, int] = {}
        for inp in self.inputs:
            users = self.consumers(inp.name)
            if not users or inp.name in self.output_names:
                continue
            elem = inp.type.tensor_type.elem_type
            if elem not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) or not _has_shape(inp):
                continue
            depths = set()
            for u in users:
                table = self.inits.get(u.input[0])
                axis = node_attrs(u).get("axis", 0)
                ok = op_key(u) == "Gather" and len(u.input) == 2 and u.input[1] == inp.name
                if not ok or table is None or table.ndim != 2 or axis not in (0, -2):
                    break
                depths.add(table.shape[0])
            else:
                if len(depths) == 1:
                    rewritten[inp.name] = depths.pop()
        if not rewritten:
            return None
        first, rest = [], []
        for node in self.nodes:
            if op_key(node) == "Gather" and node.input[1] in rewritten:
                first.append(
                    helper.make_node(
                        "MatMul", [node.input[1], node.input[0]], list(node.output), name=node.name
                    )
                )
            else:
                rest.append(node)
        self.nodes = first + rest
        pre_nodes, pre_inits, pre_outputs, new_inputs = [], [], [], []
        for inp in self.inputs:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in _dims(inp)]
            if inp.name in rewritten:
                depth = rewritten[inp.name]
                out = f"{inp.name}.onehot"
                pre_inits += [
                    from_array(np.array(depth, dtype=np.int64), f"{inp.name}.depth"),
                    from_array(np.array([0, 1], dtype=np.float32), f"{inp.name}.values"),
                ]
                pre_nodes.append(
                    helper.make_node(
                        "OneHot",
                        [inp.name, f"{inp.name}.depth", f"{inp.name}.values"],
                        [out],
                        name=f"{inp.name}.OneHot",
                    )
                )
                shape = [*dims, depth]
                new = helper.make_tensor_value_info(inp.name, onnx.TensorProto.FLOAT, shape)
                pre_outputs.append(
                    helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, shape)
                )
            else:
                out = f"{inp.name}.input"
                pre_nodes.append(helper.make_node("Identity", [inp.name], [out]))
                new = inp
                elem = inp.type.tensor_type.elem_type
                pre_outputs.append(helper.make_tensor_value_info(out, elem, dims or None))
            new_inputs.append(new)
        pre_graph = helper.make_graph(
            pre_nodes, f"{self.name}.preprocessing", list(self.inputs), pre_outputs, pre_inits
        )
        self.inputs = new_inputs
        pre = helper.make_model(
            pre_graph, opset_imports=[helper.make_opsetid("", PREPROCESSING_OPSET)]
        )
        pre.ir_version = model.ir_version
        return pre

    def to_model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        produced = {o for n in self.nodes for o in n.output}
        graph = helper.make_graph(
            self.nodes,
            self.name,
            self.inputs,
            self.outputs,
            [from_array(v, k) for k, v in self.inits.items()],
            value_info=[v for v in self.value_info if v.name in produced],
        )
        out = onnx.ModelProto()
        out.CopyFrom(model)
        out.graph.CopyFrom(graph)
        return out


def _has_shape(v: onnx.ValueInfoProto) -> bool:
    return v.type.tensor_type.HasField("shape")


def _dims(v: onnx.ValueInfoProto) -> list[Any]:
    return list(v.type.tensor_type.shape.dim) if _has_shape(v) else []
