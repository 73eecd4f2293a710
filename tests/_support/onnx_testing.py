"""Helpers for the ONNX import tests: single-node models and onnxruntime references."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper


def np_to_onnx(dtype: Any) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    outputs: list[str],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 14,
    out_types: dict[str, tuple[int, Any]] | None = None,
    extra_opsets: tuple[tuple[str, int], ...] = (),
    dynamic_batch: bool = False,
) -> onnx.ModelProto:
    """A model with the given nodes; graph inputs typed from the example arrays."""
    ins = []
    for k, v in inputs.items():
        shape: list[Any] = list(v.shape)
        if dynamic_batch and shape:
            shape[0] = "N"
        ins.append(helper.make_tensor_value_info(k, np_to_onnx(v.dtype), shape))
    out_types = out_types or {}
    outs = [
        helper.make_tensor_value_info(o, *out_types[o])
        if o in out_types
        else helper.make_empty_tensor_value_info(o)
        for o in outputs
    ]
    init_list = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    graph = helper.make_graph(nodes, "test", ins, outs, init_list)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    ir = min(helper.find_min_ir_version_for(opsets[:1]), 10)
    return helper.make_model(graph, opset_imports=opsets, ir_version=max(ir, 7))


def run_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(sess.run(None, inputs))


def typed(model: onnx.ModelProto, outputs: list[np.ndarray]) -> onnx.ModelProto:
    """The model with output types (needed by onnx.checker) taken from onnxruntime's results."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi, arr in zip(out.graph.output, outputs, strict=True):
        if not vi.type.HasField("tensor_type"):
            vi.CopyFrom(
                helper.make_tensor_value_info(vi.name, np_to_onnx(arr.dtype), list(arr.shape))
            )
    return out


def single_node(
    op: str,
    inputs: dict[str, np.ndarray],
    inits: dict[str, np.ndarray] | None = None,
    attrs: dict[str, Any] | None = None,
    opset: int = 14,
    order: list[str] | None = None,
    n_outputs: int = 1,
) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """A one-node model (inputs in ``order``; "" for an absent optional) and ORT's outputs."""
    names = order if order is not None else [*inputs, *(inits or {})]
    outputs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outputs, name=f"{op}_node", **(attrs or {}))
    model = make_model([node], inputs, outputs, inits, opset)
    ref = run_ort(model, inputs)
    return typed(model, ref), ref
