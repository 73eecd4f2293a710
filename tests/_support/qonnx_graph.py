"""A tiny builder of hand-made QONNX graphs (Quant nodes of both QONNX domains)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["DOMAINS", "Graph"]

DOMAINS = ["qonnx.custom_op.general", "onnx.brevitas"]


class Graph:
    """A tiny onnx.helper builder for QONNX graphs."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def quant(
        self,
        x: str,
        scale: Any,
        zp: Any = 0.0,
        bits: Any = 3.0,
        signed: int = 1,
        narrow: int = 0,
        rounding_mode: str = "ROUND",
        scale_name: str | None = None,
    ) -> str:
        self.count += 1
        out = f"q{self.count}"
        inputs = [x, scale_name or self.const(scale), self.const(zp), self.const(bits)]
        self.nodes.append(
            helper.make_node(
                "Quant",
                inputs,
                [out],
                name=f"Quant_{self.count}",
                domain=self.domain,
                signed=signed,
                narrow=narrow,
                rounding_mode=rounding_mode,
            )
        )
        return out

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.count}", **attrs))
        return out

    def model(self, out: str, n_in: int = 6, extra_inputs: tuple[str, ...] = ()) -> Any:
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n_in])]
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in extra_inputs]
        graph = helper.make_graph(
            self.nodes,
            "qat",
            inputs,
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None, None])],
            initializer=self.inits,
        )
        return helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid(self.domain, 1)],
        )
