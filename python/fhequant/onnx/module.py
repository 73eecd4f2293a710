"""``NumpyModule``: an ONNX graph run in numpy, node by node (the float model of calibration)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx

from fhequant.errors import FhequantError, GraphInputError, OnnxImportError, ShapeError
from fhequant.onnx._proto import node_attrs, node_label, op_key, to_array
from fhequant.onnx.preprocess import load_model, preprocess
from fhequant.onnx.registry import ONNX_OPS, OpSpec
from fhequant.onnx.torch_export import Exporter, export_to_onnx

__all__ = ["GraphNode", "NumpyModule"]


@dataclass(frozen=True, eq=False)
class GraphNode:
    """One node of a pre-processed graph, ready to run.

    Attributes:
        index: position in the graph's node list (topological order).
        name: the node name (``op_type#index`` when the ONNX node has none).
        op_type: the registry key ("Gemm", "onnx.brevitas.Quant").
        spec: the registry entry (implementations and input/attribute metadata).
        inputs: input tensor names in the op's order; None for an absent optional input.
        outputs: output tensor names.
        attrs: every attribute of the op, defaults applied.
        constants: input position → numpy value, for inputs that are initializers.
    """

    index: int
    name: str
    op_type: str
    spec: OpSpec
    inputs: tuple[str | None, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    constants: Mapping[int, np.ndarray] = field(default_factory=dict)

    def run(self, *inputs: Any, quant_semantics: bool = False) -> tuple[Any, ...]:
        """Run the op on its inputs (in ``self.inputs`` order; None for absent ones).

        Args:
            *inputs: the input values.
            quant_semantics: use the docs/contract.md §5.3 implementation (``spec.quant_fn``).

        Returns:
            One value per entry of ``self.outputs``.

        Raises:
            ShapeError: numpy rejected the inputs (message names the node and the shapes).
        """
        fn = self.spec.quant_fn if quant_semantics else self.spec.fn
        try:
            if quant_semantics:
                res = fn(*inputs, **self.attrs)
            else:  # graph semantics: inf/nan silently, as onnxruntime
                with np.errstate(all="ignore"):
                    res = fn(*inputs, **self.attrs)
        except FhequantError as exc:
            raise type(exc)(f"node {self.name!r} ({self.op_type}): {exc}") from exc
        except (ValueError, TypeError, IndexError, ArithmeticError) as exc:
            shapes = [None if x is None else np.shape(x) for x in inputs]
            raise ShapeError(
                f"node {self.name!r} ({self.op_type}) failed on inputs of shapes {shapes}: {exc}"
            ) from exc
        if isinstance(res, tuple):
            return res[: len(self.outputs)]
        return (res,)


class NumpyModule:
    """Run a (pre-processed) ONNX graph with numpy, batch on axis 0.

    Args:
        model: an ``onnx.ModelProto``, serialized bytes, a path to a .onnx file, or a
            ``torch.nn.Module`` (exported with ``fhequant.onnx.torch_export.export_to_onnx``;
            as Concrete ML's ``NumpyModule(model, dummy_input)``).
        dummy_input: the sample input(s) of a torch module (one array/tensor, or a tuple for
            several inputs; only the first row of each is used). Required for torch modules,
            refused for ONNX models.
        debug_onnx_output_dir: a directory to write the exported ONNX of a torch module to
            (``<dir>/<ModuleClass>.onnx``), for debugging.
        debug_onnx_output_file_path: the same, as a file path (Concrete ML's keyword).

    Attributes:
        onnx_model: the pre-processed graph.
        onnx_preprocessing: the one-hot pre-processing graph, or None.
        input_names / output_names: the graph's input and output names.
        initializers: initializer name → numpy array (after constant folding).
        nodes: the graph's nodes as ``GraphNode`` (see ``iter_nodes``).

    ``forward`` returns what onnxruntime returns (bool comparisons, ...). Calibration uses
    ``forward(..., quant_semantics=True)`` or walks ``nodes`` and calls
    ``node.run(..., quant_semantics=True)``, which use the docs/contract.md §5.3 forms.
    """

    def __init__(
        self,
        model: Any,
        dummy_input: Any = None,
        debug_onnx_output_dir: str | os.PathLike[str] | None = None,
        *,
        debug_onnx_output_file_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if _is_torch_module(model):
            if dummy_input is None:
                raise GraphInputError(
                    f"NumpyModule: a torch module ({type(model).__name__}) needs dummy_input, "
                    "sample inputs for its ONNX export"
                )
            exported = export_to_onnx(model, dummy_input)
            _write_debug_onnx(
                exported, type(model).__name__, debug_onnx_output_dir, debug_onnx_output_file_path
            )
            model = exported
        elif dummy_input is not None:
            raise GraphInputError(
                "NumpyModule: dummy_input is only for torch modules; an ONNX model carries its "
                "input shapes"
            )
        proto = load_model(model)
        result = preprocess(proto)
        self.onnx_model: onnx.ModelProto = result.model
        self.onnx_preprocessing: onnx.ModelProto | None = result.preprocessing
        self.initializers: dict[str, np.ndarray] = result.initializers
        try:
            self._pre = _Runner(result.preprocessing, None) if result.preprocessing else None
            self._main = _Runner(result.model, result.initializers)
        except FhequantError:
            raise
        except Exception as exc:
            raise OnnxImportError(f"the ONNX graph cannot be prepared: {exc!r}") from exc
        self.nodes: tuple[GraphNode, ...] = self._main.nodes
        self.output_names: tuple[str, ...] = self._main.output_names
        self.input_names: tuple[str, ...] = (
            self._pre.input_names if self._pre else self._main.input_names
        )

    @classmethod
    def from_torch(cls, model: Any, inputset: Any, exporter: Exporter = "legacy") -> NumpyModule:
        """Export a torch module to ONNX (``fhequant.torch.export_to_onnx``) and import it.

        Args:
            model: a ``torch.nn.Module``.
            inputset: one array/tensor, or a tuple of them for several inputs.
            exporter: "legacy" (TorchScript exporter at opset 14, the reference's graphs; the
                default) or "dynamo" (torch's default exporter; needs onnxscript). Either way
                axis 0 is a dynamic batch axis.

        Returns:
            The NumpyModule of the exported graph.
        """
        return cls(export_to_onnx(model, inputset, exporter=exporter))

    @property
    def graph_input_names(self) -> tuple[str, ...]:
        """Input names of the pre-processed graph (after the one-hot pre-processing)."""
        return self._main.input_names

    def iter_nodes(self) -> Iterator[GraphNode]:
        """The nodes in execution order."""
        return iter(self.nodes)

    def preprocess_inputs(self, *inputs: Any, **named: Any) -> tuple[np.ndarray, ...]:
        """Check the inputs and run the one-hot pre-processing graph (if any).

        Returns:
            The inputs of ``onnx_model``, in ``graph_input_names`` order.

        Raises:
            GraphInputError: missing, extra or mis-shaped inputs.
        """
        if self._pre is None:
            return self._main.check_inputs(inputs, named)
        values = self._pre.check_inputs(inputs, named)
        outs = self._pre.run(values, quant_semantics=False)
        return self._main.check_inputs(outs, {})

    def forward(self, *inputs: Any, quant_semantics: bool = False, **named: Any) -> Any:
        """Run the graph.

        Args:
            *inputs: one array per graph input, in ``input_names`` order (batch on axis 0);
                they may also be given by name as keyword arguments.
            quant_semantics: run the docs/contract.md §5.3 implementations (bools as float64 0/1,
                ...).

        Returns:
            One array for a single-output graph, else a tuple in ``output_names`` order.
        """
        values = self.preprocess_inputs(*inputs, **named)
        outs = self._main.run(values, quant_semantics=quant_semantics)
        return outs[0] if len(outs) == 1 else outs

    __call__ = forward

    def pre_processing(self, *inputs: Any) -> tuple[np.ndarray, ...]:
        """Concrete ML's name of :meth:`preprocess_inputs`."""
        return self.preprocess_inputs(*inputs)

    def __repr__(self) -> str:
        return (
            f"NumpyModule(inputs={list(self.input_names)}, outputs={list(self.output_names)}, "
            f"nodes={len(self.nodes)})"
        )


def _is_torch_module(model: Any) -> bool:
    """Whether ``model`` is a torch module (without importing torch when it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _write_debug_onnx(
    model: onnx.ModelProto,
    class_name: str,
    directory: str | os.PathLike[str] | None,
    file_path: str | os.PathLike[str] | None,
) -> None:
    """Save the exported ONNX of a torch module where the caller asked (debugging aid)."""
    targets = [] if file_path is None else [Path(file_path)]
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        targets.append(Path(directory) / f"{class_name}.onnx")
    for target in targets:
        onnx.save(model, str(target))


def _declared_dims(v: onnx.ValueInfoProto) -> list[int | None] | None:
    t = v.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


class _Runner:
    """The executable form of one graph: nodes, liveness, input checks."""

    def __init__(self, model: onnx.ModelProto, inits: dict[str, np.ndarray] | None) -> None:
        graph = model.graph
        self.inits = (
            inits if inits is not None else {t.name: to_array(t) for t in graph.initializer}
        )
        inputs = [v for v in graph.input if v.name not in self.inits]
        self.input_names = tuple(v.name for v in inputs)
        self.input_dims = {v.name: _declared_dims(v) for v in inputs}
        self.output_names = tuple(v.name for v in graph.output)
        self.nodes = tuple(self._node(i, n) for i, n in enumerate(graph.node))
        # liveness: the tensors to drop after each node
        last: dict[str, int] = {}
        for node in self.nodes:
            for x in node.inputs:
                if x is not None and x not in self.inits:
                    last[x] = node.index
        keep = set(self.output_names)
        self.drops: list[list[str]] = [[] for _ in self.nodes]
        for name, idx in last.items():
            if name not in keep:
                self.drops[idx].append(name)

    def _node(self, index: int, node: onnx.NodeProto) -> GraphNode:
        key = op_key(node)
        spec = ONNX_OPS[key]
        label = node_label(node, index)
        attrs = spec.resolve_attrs(node_attrs(node), label, len(node.output))
        n_in = len(node.input)
        if n_in < spec.n_required or (n_in > len(spec.inputs) and not spec.is_variadic):
            raise OnnxImportError(
                f"node {label!r} ({key}) has {n_in} inputs; {key} takes {spec.input_names}"
            )
        if spec.n_outputs != -1 and len(node.output) > spec.n_outputs:
            raise OnnxImportError(
                f"node {label!r} ({key}) declares {len(node.output)} outputs; fhequant "
                f"computes {spec.n_outputs}"
            )
        inputs = tuple(x if x else None for x in node.input)
        consts = {
            i: self.inits[x] for i, x in enumerate(inputs) if x is not None and x in self.inits
        }
        return GraphNode(
            index=index,
            name=label,
            op_type=key,
            spec=spec,
            inputs=inputs,
            outputs=tuple(node.output),
            attrs=MappingProxyType(attrs),
            constants=MappingProxyType(consts),
        )

    def check_inputs(
        self, inputs: Sequence[Any], named: Mapping[str, Any]
    ) -> tuple[np.ndarray, ...]:
        expected = self.input_names
        unknown = sorted(set(named) - set(expected))
        if unknown:
            raise GraphInputError(
                f"unknown input name(s) {unknown}; the graph takes {list(expected)}"
            )
        if len(inputs) > len(expected):
            raise GraphInputError(
                f"{len(inputs)} inputs given, the graph takes {len(expected)}: {list(expected)}"
            )
        given = dict(zip(expected, inputs, strict=False))
        twice = sorted(set(given) & set(named))
        if twice:
            raise GraphInputError(f"input(s) {twice} given both by position and by name")
        given.update(named)
        missing = [n for n in expected if n not in given]
        if missing:
            raise GraphInputError(
                f"missing graph input(s) {missing}; the graph takes {list(expected)} "
                f"({len(inputs)} given by position)"
            )
        out = []
        for name in expected:
            value = _as_array(given[name])
            dims = self.input_dims[name]
            if dims is not None:
                if value.ndim != len(dims):
                    raise GraphInputError(
                        f"input {name!r} has rank {value.ndim} (shape {value.shape}); the graph "
                        f"expects rank {len(dims)} (shape {dims}, batch on axis 0)"
                    )
                bad = [
                    i
                    for i, (d, s) in enumerate(zip(dims, value.shape, strict=False))
                    if i > 0 and d not in (None, 0) and d != s
                ]
                if bad:
                    raise GraphInputError(
                        f"input {name!r} has shape {value.shape}; the graph expects {dims} "
                        f"(axes {bad} differ; axis 0 is the batch)"
                    )
            out.append(value)
        return tuple(out)

    def run(self, inputs: Sequence[np.ndarray], quant_semantics: bool) -> tuple[Any, ...]:
        values: dict[str, Any] = dict(self.inits)
        values.update(zip(self.input_names, inputs, strict=False))
        for node, drops in zip(self.nodes, self.drops, strict=False):
            args = [None if x is None else values[x] for x in node.inputs]
            outs = node.run(*args, quant_semantics=quant_semantics)
            for name, v in zip(node.outputs, outs, strict=False):
                if name:
                    values[name] = v
            for name in drops:
                del values[name]
        return tuple(values[n] for n in self.output_names)


def _as_array(x: Any) -> np.ndarray:
    """An input as a numpy array (torch tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
