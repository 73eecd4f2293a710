"""Statistics gathered one op ahead (fhequant.quantized.calibration.ahead).

A Gemm/MatMul/Conv that reads the output of the op before it (directly or through a Relu)
may get its min/max from a guess fed during that op's output pass; the module must be the one
its own statistics pass gives (ahead.ENABLED False), whether the guess was taken or rejected,
and the consumers that do not qualify must keep their pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import helper

from fhequant import build_quantized_module
from fhequant.quantized.calibration import ahead
from ptq_helpers import (
    assert_same_module,
    build_with_and_without,
    cnn,
    make_model,
    mlp,
    spy_fused_statistics,
)

RNG = np.random.default_rng(11)
X_MLP = RNG.normal(size=(900, 12)).astype(np.float32)
X_CNN = RNG.normal(size=(300, 1, 8, 8)).astype(np.float32)


@pytest.fixture(autouse=True)
def _any_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guess on these small sets too (by default only from ``ahead.MIN_ROWS`` rows)."""
    monkeypatch.setattr(ahead, "MIN_ROWS", 0)


def _spy(m: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The outputs whose statistics a guess ("ahead") and the fused statistics pass ("pass")
    gave, and the guesses rejected ("rejected")."""
    seen: dict[str, list[str]] = {"ahead": [], "pass": [], "rejected": []}
    take = ahead.StatisticsAhead.take

    def spy_take(self: ahead.StatisticsAhead, out: str, *args: Any) -> Any:
        before = self.rejected
        found = take(self, out, *args)
        if found is not None:
            seen["ahead"].append(out)
        elif self.rejected > before:
            seen["rejected"].append(out)
        return found

    m.setattr(ahead.StatisticsAhead, "take", spy_take)
    spy_fused_statistics(m, seen["pass"])
    return seen


def _off(m: pytest.MonkeyPatch) -> None:
    m.setattr(ahead, "ENABLED", False)


def _batches(x: np.ndarray) -> Any:
    sizes = (7, 100, 33, 260)
    start, i = 0, 0
    while start < len(x):
        yield x[start : start + sizes[i % len(sizes)]]
        start, i = start + sizes[i % len(sizes)], i + 1


@pytest.mark.parametrize("batch_size", [64, 300])
@pytest.mark.parametrize("n_bits", [4, 6])
def test_the_hidden_gemms_are_served_by_their_producers_pass(
    monkeypatch: pytest.MonkeyPatch, batch_size: int, n_bits: int
) -> None:
    model = mlp([12, 24, 16, 5], seed=3)
    with_ahead, without, seen = build_with_and_without(
        monkeypatch, model, X_MLP, _spy, _off, n_bits=n_bits, batch_size=batch_size
    )
    # g0: gathered while the inputs load; g1 and y: by a guess each, taken or rejected
    assert sorted(seen["ahead"] + seen["rejected"]) == ["g1", "y"]
    assert sorted(seen["pass"]) == sorted(seen["rejected"])
    assert_same_module(with_ahead, without, X_MLP[:50])


def test_streamed_batches_give_the_same_module(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mlp([12, 24, 16, 5], seed=3)
    with monkeypatch.context() as m:
        seen = _spy(m)
        got = build_quantized_module(model, _batches(X_MLP), n_bits=6, batch_size=128)
    assert seen["ahead"]
    want = build_quantized_module(model, X_MLP, n_bits=6, batch_size=900)  # one block
    assert_same_module(got, want, X_MLP[:50])


def test_a_guess_of_the_wrong_range_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    # seed 5 at 6 bits on these rows: one Gemm's integers reach the top of their clip range
    # (the guess holds), the other's do not (its Relu's quantizer differs from the guess)
    model = mlp([12, 24, 16, 5], seed=5)
    with_ahead, without, seen = build_with_and_without(
        monkeypatch, model, X_MLP, _spy, _off, n_bits=6, batch_size=128
    )
    assert seen["ahead"] and seen["rejected"]
    assert_same_module(with_ahead, without, X_MLP[:50])


@pytest.mark.parametrize("spoil", ["table", "dequant", "weights", "rows"])
def test_a_guess_that_differs_from_the_pass_is_never_taken(
    monkeypatch: pytest.MonkeyPatch, spoil: str
) -> None:
    """Each thing the kernel read is compared: a guess spoiled in any one is rejected."""
    build = ahead.build_guess

    def spoiled(*args: Any) -> ahead.Guess | None:
        guess = build(*args)
        assert guess is not None
        if spoil == "table":
            assert guess.table is not None
            guess.table = guess.table.copy()
            guess.table[-1] -= 1
        elif spoil == "dequant":
            guess.dequant = (guess.dequant[0] * (1 + 2**-40), guess.dequant[1])
        elif spoil == "weights":
            guess.plan = (*guess.plan[:1], guess.plan[1] * 2, *guess.plan[2:])
        return guess

    finish = ahead.StatisticsAhead.finish

    def one_block_short(self: ahead.StatisticsAhead, source: str) -> None:
        guess = self._active.get(source)
        if guess is not None:
            guess.fed -= 1  # as if the pass had stored one block fewer than the walk holds
        finish(self, source)

    model = mlp([12, 24, 16, 5], seed=3)
    with monkeypatch.context() as m:
        m.setattr(ahead, "build_guess", spoiled)
        if spoil == "rows":
            m.setattr(ahead.StatisticsAhead, "finish", one_block_short)
        seen = _spy(m)
        got = build_quantized_module(model, X_MLP, n_bits=6, batch_size=128)
    assert seen["ahead"] == [] and sorted(seen["rejected"]) == ["g1", "y"]
    assert sorted(seen["pass"]) == ["g1", "y"]
    with monkeypatch.context() as m:
        _off(m)
        want = build_quantized_module(model, X_MLP, n_bits=6, batch_size=128)
    assert_same_module(got, want, X_MLP[:50])


def _skip_first_block(add: Any) -> Any:
    def skip_first(self: ahead.Guess, b: int, ints: np.ndarray) -> None:
        if b != 0:
            add(self, b, ints)  # block 1 arrives after no block: the guess stops

    return skip_first


def _fail(add: Any) -> Any:
    def fail(self: ahead.Guess, b: int, ints: np.ndarray) -> None:
        raise RuntimeError("a kernel error")

    return fail


@pytest.mark.parametrize("wrap", [_skip_first_block, _fail], ids=["missed-block", "error"])
def test_a_guess_that_stops_leaves_the_consumer_its_pass(
    monkeypatch: pytest.MonkeyPatch, wrap: Any
) -> None:
    model = mlp([12, 24, 16, 5], seed=3)
    with monkeypatch.context() as m:
        m.setattr(ahead.Guess, "add", wrap(ahead.Guess.add))
        seen = _spy(m)
        got = build_quantized_module(model, X_MLP, n_bits=6, batch_size=128)
    assert seen == {"ahead": [], "pass": ["g1", "y"], "rejected": []}
    want = build_quantized_module(model, X_MLP, n_bits=6, batch_size=128)
    assert_same_module(got, want, X_MLP[:50])


def test_a_guess_fed_blocks_out_of_order_stops() -> None:
    guess = ahead.Guess(
        source="g",
        read="g",
        out="y",
        lo=0,
        table=None,
        dequant=(1.0, 0.0),
        extremes=None,  # type: ignore[arg-type]  # never reached
        plan=(),
    )
    with pytest.raises(Exception, match="block 1 after 0 blocks"):
        guess.add(1, np.zeros((2, 3), dtype=np.int8))


def test_the_second_conv_is_served_by_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    with_ahead, without, seen = build_with_and_without(
        monkeypatch, cnn(seed=2), X_CNN, _spy, _off, n_bits=5, batch_size=64
    )
    assert seen["ahead"] + seen["rejected"] == ["y"]  # conv2's output
    assert_same_module(with_ahead, without, X_CNN[:20])


def _shared_output() -> Any:
    """Gemm g0 read by its Relu and again by the Add after the second Gemm: two readers."""
    rng = np.random.default_rng(5)
    inits = {
        "w0": rng.normal(size=(12, 12)).astype(np.float32),
        "w1": rng.normal(size=(12, 12)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w0"], ["g0"], name="gemm0", transB=1),
        helper.make_node("Relu", ["g0"], ["r0"], name="relu"),
        helper.make_node("Gemm", ["r0", "w1"], ["y1"], name="gemm1", transB=1),
        helper.make_node("Add", ["y1", "g0"], ["z"], name="add"),
    ]
    return make_model(nodes, [("x", [None, 12])], [("z", [None, 12])], inits)


@pytest.mark.parametrize(
    ("model", "kwargs"),
    [
        (mlp([12, 8, 4], seed=1), {"rounding_threshold_bits": 5}),
        (mlp([12, 8, 4], seed=1), {"calibration": {"bias_correction": True}}),
        (mlp([12, 8, 4], seed=1), {"calibration": "percentile"}),
        (mlp([12, 8, 4], act="Abs", seed=1), {}),
        (_shared_output(), {}),
    ],
    ids=["rounding", "bias-correction", "percentile", "not-monotone", "two-readers"],
)
def test_consumers_that_do_not_qualify_keep_their_pass(
    monkeypatch: pytest.MonkeyPatch, model: Any, kwargs: dict[str, Any]
) -> None:
    with_ahead, without, seen = build_with_and_without(
        monkeypatch, model, X_MLP, _spy, _off, n_bits=6, batch_size=128, **kwargs
    )
    assert seen["ahead"] == [] and seen["rejected"] == []
    assert_same_module(with_ahead, without, X_MLP[:50])


def test_small_sets_keep_their_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ahead, "MIN_ROWS", len(X_MLP) + 1)
    seen = _spy(monkeypatch)
    build_quantized_module(mlp([12, 24, 16, 5], seed=3), X_MLP, n_bits=6, batch_size=128)
    assert seen == {"ahead": [], "pass": ["g1", "y"], "rejected": []}


@pytest.mark.parametrize("batches", [False, True], ids=["array", "batches"])
def test_the_native_thread_reduces_what_the_walk_would(
    monkeypatch: pytest.MonkeyPatch, batches: bool
) -> None:
    """With ahead.CONCURRENT the guesses' blocks go to _core.AccExtremesStream (both hidden
    Gemms here); the module is the one of the guesses reduced on the walk's thread and the
    one without guesses."""
    from fhequant import _core

    streams: list[int] = []
    real = _core.AccExtremesStream

    def counting(*args: Any) -> Any:
        streams.append(1)
        return real(*args)

    model = mlp([12, 24, 16, 5], seed=3)
    data = (lambda: _batches(X_MLP)) if batches else (lambda: X_MLP)
    modules = []
    for concurrent in (True, False):
        with monkeypatch.context() as m:
            m.setattr(ahead, "CONCURRENT", concurrent)
            m.setattr(_core, "AccExtremesStream", counting)
            seen = _spy(m)
            modules.append(build_quantized_module(model, data(), n_bits=6, batch_size=128))
        assert sorted(seen["ahead"] + seen["rejected"]) == ["g1", "y"]
        assert len(streams) == (2 if concurrent else 0)
        streams.clear()
    with monkeypatch.context() as m:
        _off(m)
        without = build_quantized_module(model, data(), n_bits=6, batch_size=128)
    assert_same_module(modules[0], modules[1], X_MLP[:50])
    assert_same_module(modules[0], without, X_MLP[:50])


def _native_threads(prefix: str) -> list[str]:
    """The names of this process's threads (Linux: /proc) that start with ``prefix``."""
    import pathlib

    names = [p.read_text().strip() for p in pathlib.Path("/proc/self/task").glob("*/comm")]
    return [n for n in names if n.startswith(prefix)]


def test_an_error_in_the_walk_stops_the_native_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass that fails while a stream runs: the walk's end collects it (no thread left)."""
    model = mlp([12, 24, 16, 5], seed=3)
    feed = ahead.StatisticsAhead.feed
    running: list[list[str]] = []
    kept: list[ahead.StatisticsAhead] = []  # alive after the walk: only close() stops it

    def failing_feed(self: ahead.StatisticsAhead, source: str, b: int, ints: np.ndarray) -> None:
        feed(self, source, b, ints)
        if b == 2:
            kept.append(self)
            running.append(_native_threads("fhequant-ahead"))
            raise RuntimeError("the pass fails")

    monkeypatch.setattr(ahead.StatisticsAhead, "feed", failing_feed)
    with pytest.raises(Exception, match="the pass fails"):
        build_quantized_module(model, X_MLP, n_bits=6, batch_size=128)
    assert running == [["fhequant-ahead"]]  # the stream's thread ran when the pass failed
    assert _native_threads("fhequant-ahead") == []
