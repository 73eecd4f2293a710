"""The pass shortcuts of the calibration walk (issue 16) give the modules of the full passes.

Each shortcut is switched off through its hook and the modules are compared bit for bit:

* the output pass of a graph-output Gemm/MatMul/Conv that no op reads runs on one block
  (``OpPasses.output_unread``), unless its integers could overflow or it calibrates rounding;
* the integers an element-wise op calibrated by table finds in its input are marked while its
  producer stores them (``WalkTensor.presence``), instead of in a pass of their own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import build_quantized_module
from fhequant.quantized.calibration.passes import OpPasses
from fhequant.quantized.calibration.store import WalkTensor, mark_presence
from fhequant.quantized.ops.linear import QuantizedConv, QuantizedGemm
from ptq_helpers import assert_same_module, cnn, mlp

RNG = np.random.default_rng(16)
X_MLP = RNG.normal(size=(700, 12)).astype(np.float32)
X_CNN = RNG.normal(size=(90, 1, 8, 8)).astype(np.float32)


def _count_q_impl(monkeypatch: pytest.MonkeyPatch, cls: Any) -> dict[str, int]:
    calls: dict[str, int] = {}
    original = cls.q_impl

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[self.op_instance_name] = calls.get(self.op_instance_name, 0) + 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "q_impl", counting)
    return calls


@pytest.mark.parametrize("n_bits", [3, 6, 8])
def test_unread_graph_output_pass_on_one_block_is_the_full_pass(
    monkeypatch: pytest.MonkeyPatch, n_bits: int
) -> None:
    model = mlp([12, 24, 16, 5], act="Relu", seed=5)
    calls = _count_q_impl(monkeypatch, QuantizedGemm)
    fast = build_quantized_module(model, X_MLP, n_bits=n_bits, batch_size=64)
    assert calls["gemm2"] == 1  # the graph output: one block
    assert calls["gemm0"] == calls["gemm1"] == 11  # read by the next op: every block
    with monkeypatch.context() as m:
        m.setattr(OpPasses, "output_unread", lambda *a: False)
        calls.clear()
        full = build_quantized_module(model, X_MLP, n_bits=n_bits, batch_size=64)
        assert calls["gemm2"] == 11
    assert_same_module(full, fast, X_MLP[:80] * 1.3)
    last_fast, last_full = fast.quant_layers_dict["y"][1], full.quant_layers_dict["y"][1]
    for field in ("scale", "zero_point", "offset"):
        np.testing.assert_array_equal(
            getattr(last_fast.output_quant_params, field),
            getattr(last_full.output_quant_params, field),
        )


def test_unread_graph_output_conv_on_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    model = cnn(seed=2)
    calls = _count_q_impl(monkeypatch, QuantizedConv)
    fast = build_quantized_module(model, X_CNN, n_bits=5, batch_size=16)
    assert sorted(calls.values()) == [1, 6]
    with monkeypatch.context() as m:
        m.setattr(OpPasses, "output_unread", lambda *a: False)
        full = build_quantized_module(model, X_CNN, n_bits=5, batch_size=16)
    assert_same_module(full, fast, X_CNN[:20])


def test_rounding_or_a_possible_overflow_keeps_every_block(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mlp([12, 24, 5], act="Relu", seed=1)
    calls = _count_q_impl(monkeypatch, QuantizedGemm)
    build_quantized_module(model, X_MLP, n_bits=4, rounding_threshold_bits=3, batch_size=100)
    assert calls["gemm1"] >= 7  # rounding is calibrated on every block
    calls.clear()
    # 2^(bits+1) * max|w - z_w| * K above 2^62: the integer check must see every block
    build_quantized_module(
        model,
        X_MLP,
        n_bits={"model_inputs": 8, "op_inputs": 28, "op_weights": 28, "model_outputs": 28},
        batch_size=100,
    )
    assert calls["gemm1"] == 7


def test_presence_marked_while_storing_is_the_presence_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Sigmoid: a table op that reads the marks (Relu, monotone, needs none:
    # test_monotone_tables.py)
    model = mlp([12, 24, 16, 5], act="Sigmoid", seed=7)
    seen: list[Any] = []
    original = WalkTensor.presence

    def spy(self: WalkTensor) -> Any:
        found = original(self)
        seen.append(found)
        return found

    monkeypatch.setattr(WalkTensor, "presence", spy)
    fast = build_quantized_module(model, X_MLP, n_bits=5, batch_size=50)
    assert len(seen) == 2 and all(s is not None for s in seen)  # both Sigmoids: no pass
    with monkeypatch.context() as m:
        m.setattr(WalkTensor, "presence", lambda self: None)
        full = build_quantized_module(model, X_MLP, n_bits=5, batch_size=50)
    assert_same_module(full, fast, X_MLP[:80] * 1.4)


@given(
    blocks=st.lists(
        st.lists(st.integers(-300, 300), min_size=1, max_size=40), min_size=1, max_size=6
    ),
    dtype=st.sampled_from([np.int8, np.int16, np.int32, np.int64]),
)
@settings(max_examples=60, deadline=None)
def test_mark_presence_is_the_union_of_the_blocks(blocks: list[list[int]], dtype: Any) -> None:
    tensor = WalkTensor("quant", track_presence=True)
    info = np.iinfo(dtype)
    arrays = [np.clip(np.array(b), info.min, info.max).astype(dtype) for b in blocks]
    for arr in arrays:
        mark_presence(tensor, arr, arr.min(), arr.max())
    values = np.unique(np.concatenate(arrays).astype(np.int64))
    assert tensor.present is not None and tensor.present_lo is not None
    marked = np.flatnonzero(tensor.present) + tensor.present_lo
    np.testing.assert_array_equal(marked, values)
    assert tensor.present_lo == values.min()
    assert tensor.present.size == values.max() - values.min() + 1


def test_mark_presence_stops_for_blocks_that_cannot_index_a_table() -> None:
    tensor = WalkTensor("quant", track_presence=True)
    mark_presence(tensor, np.array([1, 2], dtype=np.int8), 1, 2)
    mark_presence(tensor, np.array([3, 250], dtype=np.uint8), 3, 250)
    assert not tensor.track_presence and tensor.present is None


def _count_kernel(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    from fhequant import _core

    calls = [0]
    original = getattr(_core, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(_core, name, counting)
    return calls


@pytest.mark.parametrize(
    ("which", "n_bits", "rounding", "batch"),
    [
        ("mlp", 6, None, 64),
        ("mlp", 3, None, 700),  # one block: the whole-set walk
        ("mlp", 12, None, 100),  # int16 integers
        ("mlp", 5, 4, 100),  # rounding points calibrated
        ("cnn", 5, None, 16),
        ("cnn", 8, 6, 30),
    ],
)
def test_output_quantized_in_kernel_is_the_written_float_path(
    monkeypatch: pytest.MonkeyPatch, which: str, n_bits: int, rounding: Any, batch: int
) -> None:
    import fhequant.quantized.calibration.passes as passes

    model, x = (
        (mlp([12, 24, 16, 5], act="Relu", seed=9), X_MLP)
        if which == "mlp"
        else (
            cnn(seed=4),
            X_CNN,
        )
    )
    kernel = "int_matmul_rescale_quant" if which == "mlp" else "int_conv2d_rescale_quant"
    calls = _count_kernel(monkeypatch, kernel)
    opts = {"n_bits": n_bits, "rounding_threshold_bits": rounding, "batch_size": batch}
    fast = build_quantized_module(model, x, **opts)
    # with rounding to calibrate every output pass watches the accumulators: no fused kernel
    assert (calls[0] > 0) == (rounding is None)
    with monkeypatch.context() as m:
        m.setattr(passes, "QUANTIZE_IN_KERNEL", False)
        calls[0] = 0
        full = build_quantized_module(model, x, **opts)
        assert calls[0] == 0
    assert_same_module(full, fast, x[:80] * 1.3)
