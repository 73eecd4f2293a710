"""Shape ops that move every value (Reshape, Flatten, Transpose, Squeeze, Unsqueeze) take the
min and max of their float result from their input's stored integer range
(``OpPasses.moved_extremes``): the module must be the one the materialised statistics pass
gives, and the ops that may drop or repeat values keep that pass."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import helper

from fhequant.quantized.calibration import passes
from ptq_helpers import assert_same_module, build_with_and_without, cnn, make_model

RNG = np.random.default_rng(11)
X = RNG.normal(size=(500, 12)).astype(np.float32)


def _spy(m: pytest.MonkeyPatch) -> list[str]:
    served: list[str] = []
    original = passes.OpPasses.moved_extremes

    def spy(self: passes.OpPasses, op: Any, variable: list[str]) -> Any:
        found = original(self, op, variable)
        if found is not None:
            served.append(op.op_instance_name)
        return found

    m.setattr(passes.OpPasses, "moved_extremes", spy)
    return served


def _off(m: pytest.MonkeyPatch) -> None:
    m.setattr(passes.OpPasses, "moved_extremes", lambda self, op, variable: None)


def _gemm_then(shape_nodes: list[Any], out_shape: list[Any], inits: dict[str, Any]) -> Any:
    """Gemm(12→6) → Relu → the shape nodes (reading "r", writing "s") → Gemm to y."""
    rng = np.random.default_rng(3)
    inits = {
        "w0": rng.normal(size=(6, 12)).astype(np.float32),
        "b0": rng.normal(size=6).astype(np.float32),
        "w1": rng.normal(size=(4, 6)).astype(np.float32),
        **inits,
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["g"], name="gemm0", transB=1),
        helper.make_node("Relu", ["g"], ["r"], name="relu"),
        *shape_nodes,
        helper.make_node("MatMul", ["s", "w1t"], ["y"], name="head"),
    ]
    inits["w1t"] = inits.pop("w1").T.copy()
    return make_model(nodes, [("x", [None, 12])], [("y", out_shape)], inits)


CASES = {
    "reshape": (
        [helper.make_node("Reshape", ["r", "shape"], ["s"], name="op")],
        {"shape": np.array([-1, 6], dtype=np.int64)},
    ),
    "flatten": ([helper.make_node("Flatten", ["r"], ["s"], name="op", axis=1)], {}),
    "transpose_twice": (
        [
            helper.make_node("Transpose", ["r"], ["t"], name="op", perm=[1, 0]),
            helper.make_node("Transpose", ["t"], ["s"], name="op2", perm=[1, 0]),
        ],
        {},
    ),
    "unsqueeze_squeeze": (
        [
            helper.make_node("Unsqueeze", ["r", "axes"], ["u"], name="op"),
            helper.make_node("Squeeze", ["u", "axes"], ["s"], name="op2"),
        ],
        {"axes": np.array([1], dtype=np.int64)},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch_size", [64, 4096])
def test_moving_shape_ops_take_their_inputs_range(
    monkeypatch: pytest.MonkeyPatch, case: str, batch_size: int
) -> None:
    nodes, inits = CASES[case]
    model = _gemm_then(nodes, [None, 4], inits)
    with_, without, served = build_with_and_without(
        monkeypatch, model, X, _spy, _off, n_bits=5, batch_size=batch_size
    )
    assert served and served[0] == "op"
    assert_same_module(with_, without, X[:40])


def test_the_cnns_flatten_takes_its_inputs_range(monkeypatch: pytest.MonkeyPatch) -> None:
    # Conv → Relu → Conv (graph output) has no shape op: add a Flatten and a Gemm head
    base = cnn(seed=4)
    rng = np.random.default_rng(8)
    graph = base.graph
    graph.node[-1].output[0] = "c2"
    graph.node.extend(
        [
            helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
            helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "wh", "bh"], ["y"], name="fc", transB=1),
        ]
    )
    graph.initializer.extend(
        [
            helper.make_tensor("wh", 1, [3, 96], rng.normal(size=288).tolist()),
            helper.make_tensor("bh", 1, [3], rng.normal(size=3).tolist()),
        ]
    )
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("y", 1, [None, 3])])
    x = RNG.normal(size=(300, 1, 8, 8)).astype(np.float32)
    for batch_size in (50, 4096):
        with_, without, served = build_with_and_without(
            monkeypatch, base, x, _spy, _off, n_bits=5, batch_size=batch_size
        )
        assert served == ["flatten"]
        assert_same_module(with_, without, x[:30])


def test_ops_that_drop_values_keep_their_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [
        helper.make_node("Slice", ["r", "starts", "ends", "axes"], ["s"], name="op"),
    ]
    inits = {
        "starts": np.array([0], dtype=np.int64),
        "ends": np.array([6], dtype=np.int64),
        "axes": np.array([1], dtype=np.int64),
    }
    model = _gemm_then(nodes, [None, 4], inits)
    with_, without, served = build_with_and_without(
        monkeypatch, model, X, _spy, _off, n_bits=5, batch_size=64
    )
    assert served == []
    assert_same_module(with_, without, X[:40])
