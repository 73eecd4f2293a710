"""Calibration through integer tables gives the numbers of the block walk, exactly.

Element-wise ops of one quantized tensor are calibrated once per distinct input integer
(``TablePaths.calibrate_by_table``), and the re-quantization of a linear or shape op's
input is a table over the producer's integers (``TablePaths.requant_table``). Each test builds
the same module with those paths switched off and demands identical state and outputs, and
checks that the paths were taken.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from onnx import helper

from fhequant import build_quantized_module
from fhequant.quantized import ONNX_OPS_TO_QUANTIZED_IMPL
from fhequant.quantized.calibration.tables import TablePaths
from ptq_helpers import assert_same_module, build_with_and_without, gemm_node, make_model, mlp

#: the op types whose class declares that it may be calibrated by table
_TABLE_OPS = {op for op, cls in ONNX_OPS_TO_QUANTIZED_IMPL.items() if cls.calibrate_by_table}

RNG = np.random.default_rng(77)
X = RNG.normal(size=(700, 10)).astype(np.float32)

# ONNX attributes that keep each op's output varied on N(0, 1)-ish inputs
_ATTRS: dict[str, dict[str, Any]] = {
    "LeakyRelu": {"alpha": 0.1},
    "Elu": {"alpha": 0.7},
    "Celu": {"alpha": 1.3},
    "HardSigmoid": {"alpha": 0.3, "beta": 0.4},
}


def _without_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TablePaths, "calibrate_by_table", _never)
    monkeypatch.setattr(TablePaths, "requant_table", lambda *_: None)


def _never(*_: Any) -> bool:
    return False


def _count_tables(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    taken: Counter[str] = Counter()
    by_table = TablePaths.calibrate_by_table
    requant = TablePaths.requant_table

    def counting_table(self: Any, op: Any, variable: list[str], out: str) -> bool:
        done = by_table(self, op, variable, out)
        taken["table:" + op._impl_for_op_named] += int(done)
        return done

    def counting_requant(self: Any, name: str, op: Any) -> Any:
        found = requant(self, name, op)
        taken["requant:" + op._impl_for_op_named] += int(found is not None)
        return found

    monkeypatch.setattr(TablePaths, "calibrate_by_table", counting_table)
    monkeypatch.setattr(TablePaths, "requant_table", counting_requant)
    return taken


def _both(
    monkeypatch: pytest.MonkeyPatch, model: Any, x: np.ndarray, **kwargs: Any
) -> tuple[Any, Any, Counter[str]]:
    """(with the table paths, without them, the paths taken)."""
    return build_with_and_without(monkeypatch, model, x, _count_tables, _without_tables, **kwargs)


# exponential growth: smaller weights and inputs keep two chained layers finite
_GROWING = {"Exp", "Cosh", "Sinh"}
# op types ONNX defines only from a later opset than the helpers' default
_OPSET = {"Gelu": 20, "Mish": 18}


def _act_mlp(op_type: str) -> Any:
    model = mlp(
        [10, 16, 12, 4], act=op_type, seed=len(op_type), scale=0.5 if op_type in _GROWING else 1
    )
    if op_type in _OPSET:
        model.opset_import[0].version = _OPSET[op_type]
    return model


@pytest.mark.parametrize("op_type", sorted(_TABLE_OPS - {"Clip"}))
@pytest.mark.parametrize("batch_size", [10_000, 96])
def test_element_wise_ops_by_table_equal_the_block_walk(
    monkeypatch: pytest.MonkeyPatch, op_type: str, batch_size: int
) -> None:
    model = _act_mlp(op_type)
    if op_type in _ATTRS:
        for node in model.graph.node:
            if node.op_type == op_type:
                node.attribute.extend(
                    helper.make_attribute(k, v) for k, v in _ATTRS[op_type].items()
                )
    x = X if op_type in _GROWING else X * 2
    if op_type == "Log":
        # Exp then Log: Log's dequantized inputs stay positive
        model = mlp([10, 16, 4], act="Exp", seed=2)
        exp = next(n for n in model.graph.node if n.op_type == "Exp")
        consumer = next(n for n in model.graph.node if exp.output[0] in n.input)
        model.graph.node.append(helper.make_node("Log", [exp.output[0]], ["lg"], name="log"))
        consumer.input[0] = "lg"
        # keep the ONNX order topological: Log right after Exp
        nodes = list(model.graph.node)
        nodes.insert(nodes.index(exp) + 1, nodes.pop())
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        x = X
    with np.errstate(all="ignore"):
        fast, slow, taken = _both(monkeypatch, model, x, n_bits=5, batch_size=batch_size)
        assert_same_module(fast, slow, x[:40] * 1.3)
    assert taken["table:" + op_type] >= 1


def test_clip_with_scalar_constants_and_requantized_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(5)
    inits = {
        "w0": rng.normal(size=(8, 10)).astype(np.float32),
        "b0": rng.normal(size=8).astype(np.float32),
        "w1": rng.normal(size=(3, 8)).astype(np.float32),
        "b1": rng.normal(size=3).astype(np.float32),
        "lo": np.array(-0.5, dtype=np.float32),
        "hi": np.array(2.0, dtype=np.float32),
    }
    nodes = [
        gemm_node("x", "w0", "b0", "g0", "gemm0"),
        helper.make_node("Clip", ["g0", "lo", "hi"], ["c0"], name="clip"),
        gemm_node("c0", "w1", "b1", "y", "gemm1"),
    ]
    model = make_model(nodes, [("x", [None, 10])], [("y", [None, 3])], inits)
    fast, slow, taken = _both(monkeypatch, model, X, n_bits=4, batch_size=128)
    assert_same_module(fast, slow, X[:40])
    assert taken["table:Clip"] == 1


def test_gemm_after_relu_reads_the_requantized_integers_from_a_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Relu's output options are signed (its input had negatives), the next Gemm's unsigned:
    # the Gemm re-quantizes, from the table.
    model = _act_mlp("Relu")
    for rounding in (None, 3):
        fast, slow, taken = _both(
            monkeypatch, model, X, n_bits=6, batch_size=200, rounding_threshold_bits=rounding
        )
        assert_same_module(fast, slow, X[:40])
        assert taken["requant:Gemm"] >= 1


def test_conv_relu_flatten_gemm_uses_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(9)
    inits = {
        "w1": (rng.normal(size=(3, 1, 3, 3)) / 3).astype(np.float32),
        "b1": (0.1 * rng.normal(size=3)).astype(np.float32),
        "w2": (rng.normal(size=(4, 3, 3, 3)) / 5).astype(np.float32),
        "w3": (rng.normal(size=(2, 16)) / 4).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Sigmoid", ["c2"], ["s2"], name="sig2"),
        helper.make_node("Flatten", ["s2"], ["f"], name="flatten"),
        gemm_node("f", "w3", None, "y", "fc"),
    ]
    model = make_model(nodes, [("x", [None, 1, 4, 4])], [("y", [None, 2])], inits)
    x = rng.normal(size=(300, 1, 4, 4)).astype(np.float32)
    fast, slow, taken = _both(monkeypatch, model, x, n_bits=5, batch_size=64)
    assert_same_module(fast, slow, x[:20])
    assert taken["table:Relu"] == 1 and taken["table:Sigmoid"] == 1
    assert taken["requant:Conv"] == 1 and taken["requant:Flatten"] == 1


def test_table_path_reports_non_finite_results_like_the_block_walk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fhequant.errors import NonFiniteError

    model = mlp([10, 8, 4], act="Exp", seed=1, scale=300)  # exp overflows to inf
    applies = TablePaths.applies
    entered: list[str] = []

    def recording(self: Any, op: Any, variable: list[str]) -> bool:
        ok = applies(self, op, variable)
        entered.extend([op.op_instance_name] if ok else [])
        return ok

    monkeypatch.setattr(TablePaths, "applies", recording)
    with np.errstate(all="ignore"), pytest.raises(NonFiniteError, match=r"'act0'.*'a0'"):
        build_quantized_module(model, X, n_bits=5)
    assert entered == ["act0"]  # raised by the table path
