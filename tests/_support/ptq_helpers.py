"""Small ONNX models and comparison helpers for the PTQ tests (no torch needed)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fhequant import QuantizedModule, build_quantized_module

_T = TypeVar("_T")


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: Sequence[tuple[str, Sequence[Any]]],
    outputs: Sequence[tuple[str, Sequence[Any]]],
    initializers: dict[str, np.ndarray],
) -> onnx.ModelProto:
    """An opset-14 model from nodes, (name, shape) inputs and outputs, and initializers."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def gemm_node(x: str, w: str, b: str | None, out: str, name: str) -> onnx.NodeProto:
    """A torch-Linear-like Gemm (transB = 1)."""
    ins = [x, w] if b is None else [x, w, b]
    return helper.make_node("Gemm", ins, [out], name=name, alpha=1.0, beta=1.0, transB=1)


def mlp(
    sizes: Sequence[int], act: str = "Relu", seed: int = 0, scale: float = 1.0
) -> onnx.ModelProto:
    """Gemm (+ activation) layers; the last Gemm is the graph output."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, np.ndarray] = {}
    prev = "x"
    n_layers = len(sizes) - 1
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        inits[f"w{i}"] = (scale * rng.normal(size=(b, a)) / np.sqrt(a)).astype(np.float32)
        inits[f"b{i}"] = (0.1 * rng.normal(size=b)).astype(np.float32)
        out = "y" if i == n_layers - 1 else f"g{i}"
        nodes.append(gemm_node(prev, f"w{i}", f"b{i}", out, f"gemm{i}"))
        if i < n_layers - 1:
            nodes.append(helper.make_node(act, [out], [f"a{i}"], name=f"act{i}"))
            prev = f"a{i}"
    return make_model(nodes, [("x", [None, sizes[0]])], [("y", [None, sizes[-1]])], inits)


def cnn(seed: int = 0, batchnorm: bool = False) -> onnx.ModelProto:
    """Conv(1→4, 3, p1) → [BN] → Relu → Conv(4→6, 3, s2, p1) as graph output."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": (rng.normal(size=(4, 1, 3, 3)) / 3).astype(np.float32),
        "b1": (0.1 * rng.normal(size=4)).astype(np.float32),
        "w2": (rng.normal(size=(6, 4, 3, 3)) / 6).astype(np.float32),
        "b2": (0.1 * rng.normal(size=6)).astype(np.float32),
    }
    nodes = [
        helper.make_node(
            "Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4
        )
    ]
    prev = "c1"
    if batchnorm:
        inits.update(
            {
                "bn_s": rng.uniform(0.5, 2, size=4).astype(np.float32),
                "bn_b": rng.normal(size=4).astype(np.float32),
                "bn_m": rng.normal(size=4).astype(np.float32),
                "bn_v": rng.uniform(0.5, 2, size=4).astype(np.float32),
            }
        )
        nodes.append(
            helper.make_node(
                "BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn"
            )
        )
        prev = "bn"
    nodes += [
        helper.make_node("Relu", [prev], ["r1"], name="relu1"),
        helper.make_node(
            "Conv",
            ["r1", "w2", "b2"],
            ["y"],
            name="conv2",
            kernel_shape=[3, 3],
            pads=[1] * 4,
            strides=[2, 2],
        ),
    ]
    return make_model(nodes, [("x", [None, 1, 8, 8])], [("y", [None, 6, 4, 4])], inits)


def module_state(module: QuantizedModule) -> list[Any]:
    """Everything calibration decides, in comparable form."""
    state: list[Any] = []
    for q in module.input_quantizers:
        assert q is not None
        state.append(("input", repr(q.quant_options), q.scale, np.asarray(q.zero_point).tolist()))
        state.append(("input-stats", q.rmin, q.rmax))
    for name, (_, op) in module.quant_layers_dict.items():
        params = op.output_quant_params
        stats = op.output_quant_stats
        state.append(
            (
                name,
                repr(op.input_quant_opts),
                params.scale,
                np.asarray(params.zero_point).tolist(),
                params.offset,
                stats.rmin,
                stats.rmax,
                np.asarray(stats.rmin).dtype.name,
                dict(getattr(op, "lsbs_to_remove", {}) or {}),
            )
        )
    return state


def assert_same_module(a: QuantizedModule, b: QuantizedModule, x: np.ndarray) -> None:
    """Identical calibration state and identical integer/float outputs on x."""
    sa, sb = module_state(a), module_state(b)
    assert sa == sb
    np.testing.assert_array_equal(
        a.quantized_forward(a.quantize_input(x)), b.quantized_forward(b.quantize_input(x))
    )
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


def build_with_and_without(
    monkeypatch: pytest.MonkeyPatch,
    model: Any,
    data: Any,
    spy: Callable[[pytest.MonkeyPatch], _T],
    switch_off: Callable[[pytest.MonkeyPatch], None],
    **kwargs: Any,
) -> tuple[QuantizedModule, QuantizedModule, _T]:
    """Build ``model`` twice: with ``spy`` installed (its result says what the path under test
    did), then with ``switch_off`` patching that path out; each patch lasts one build.

    Returns:
        (the module with the path, the module without it, what ``spy`` returned)
    """
    with monkeypatch.context() as m:
        seen = spy(m)
        with_path = build_quantized_module(model, data, **kwargs)
    with monkeypatch.context() as m:
        switch_off(m)
        without = build_quantized_module(model, data, **kwargs)
    return with_path, without, seen


def spy_fused_statistics(m: pytest.MonkeyPatch, served: list[str]) -> None:
    """Record in ``served`` the outputs whose min/max the fused statistics pass of the walk
    (``passes.fused_statistics``) gave, for as long as ``m`` lasts."""
    from fhequant.quantized.calibration import passes

    fused = passes.fused_statistics

    def spy(cal: Any, op: Any, variable: list[str], out: str, products: Any = None) -> Any:
        found = fused(cal, op, variable, out, products)
        if found is not None:
            served.append(out)
        return found

    m.setattr(passes, "fused_statistics", spy)
