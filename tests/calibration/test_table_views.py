"""Element-wise outputs by table are views of their input, read as the stored blocks were.

``TablePaths.calibrate_by_table`` no longer stores its op's output blocks: the output is a
``TableView`` (base tensor, lo, table) of the input's stored integers. Every reader must get
the arrays the stored blocks gave (same dtype, same values), the tensor the same ranges and
presence marks, and the module the same calibration; spilled bytes drop by the views' share.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from fhequant import _core
from fhequant.quantization import QuantizedArray
from fhequant.quantized.calibration.store import WalkStore, WalkTensor
from fhequant.quantized.calibration.views import TableView
from fhequant.quantized.calibration.walk import quantize_module
from ptq_helpers import build_with_and_without, gemm_node, make_model, mlp, module_state

RNG = np.random.default_rng(16)
X = RNG.normal(size=(600, 10)).astype(np.float32)


# --- WalkStore: a view against the stored blocks -------------------------------------------


def _quantizer(n_bits: int, lo: float, hi: float) -> Any:
    return QuantizedArray(n_bits, np.array([lo, hi], dtype=np.float64)).quantizer


def _table(lo: int, seen: np.ndarray, fn: Any) -> tuple[np.ndarray, int, int]:
    """A table like ``element_table``'s: ``fn`` on the present integers, the others filled
    with the smallest result, in the smallest signed dtype."""
    present = np.flatnonzero(seen) + lo
    values = fn(present)
    qlo, qhi = int(values.min()), int(values.max())
    table = np.full(seen.size, qlo, dtype=np.int8)
    table[present - lo] = values
    return table, qlo, qhi


def _presence(store: WalkStore, name: str) -> tuple[int, np.ndarray]:
    t = store.tensors[name]
    assert t.qmin is not None and t.qmax is not None
    seen = np.zeros(t.qmax - t.qmin + 1, dtype=bool)
    for b in range(store.n_blocks):
        block = store.table_index_block(name, b)
        if block.size:
            seen |= _core.int_presence(block, t.qmin, seen.size)
    return t.qmin, seen


def _store_through(store: WalkStore, out: str, src: str, lo: int, table: np.ndarray) -> None:
    """The output pass ``calibrate_by_table`` ran before views (the reference)."""
    qlo, qhi = int(table.min()), int(table.max())
    for b in range(store.n_blocks):
        block = store.table_index_block(src, b)
        ints = _core.int_lookup(block, lo, table) if block.size else block.astype(np.int64)
        store.store_ints(out, ints, qlo, qhi, np.int64 if ints.dtype != np.int64 else None)


def _base_store(budget: int, blocks: list[np.ndarray]) -> WalkStore:
    store = WalkStore(budget, flows_raw=False)
    store.block_sizes = [b.shape[0] for b in blocks]
    store.tensors["g"] = WalkTensor("quant", _quantizer(7, -3.0, 5.0), consumers_left=1)
    for name in ("r", "s"):
        store.tensors[name] = WalkTensor(
            "quant", _quantizer(5, 0.0, 2.0), consumers_left=1, track_presence=True
        )
    for block in blocks:
        store.store_ints("g", block, None, None, None)
    return store


def _assert_same_blocks(view: WalkStore, ref: WalkStore, name: str) -> None:
    tv, tr = view.tensors[name], ref.tensors[name]
    for field in ("qmin", "qmax", "vmin", "vmax", "present_lo"):
        a, b = getattr(tv, field), getattr(tr, field)
        assert a == b and type(a) is type(b), field
    np.testing.assert_array_equal(tv.present, tr.present)
    pv, pr = tv.presence(), tr.presence()
    assert (pv is None) == (pr is None)
    for b in range(ref.n_blocks):
        pairs = [
            (view.stored_block(name, b), ref.data.get_stored(name, b)),
            (view.int_block(name, b), ref.data.get(name, b)),
            (view.float_block(name, b), ref.float_block(name, b)),
            (view.table_index_block(name, b), ref.table_index_block(name, b)),
        ]
        nv, nr = view.narrow_stored_block(name, b), ref.narrow_stored_block(name, b)
        assert (nv is None) == (nr is None)
        if nv is not None and nr is not None:
            pairs.append((nv[0], nr[0]))
        for a, r in pairs:
            assert a.dtype == r.dtype and a.shape == r.shape
            np.testing.assert_array_equal(a, r)
    blocks_v, dtypes_v = view.stored_blocks(name)
    blocks_r, dtypes_r = ref.stored_blocks(name)
    assert dtypes_v == dtypes_r
    for a, r in zip(blocks_v, blocks_r, strict=True):
        assert a.dtype == r.dtype
        np.testing.assert_array_equal(a, r)


@pytest.mark.parametrize("budget", [0, 1 << 30])
def test_a_view_and_a_view_of_a_view_read_as_the_stored_blocks(budget: int) -> None:
    rng = np.random.default_rng(3)
    blocks = [rng.integers(-30, 50, size=(n, 6)) for n in (40, 0, 25, 33)]
    view, ref = _base_store(budget, blocks), _base_store(budget, blocks)
    lo, seen = _presence(ref, "g")
    table, _, _ = _table(lo, seen, lambda q: np.maximum(q, 0) // 3)  # a Relu-like map
    _store_through(ref, "r", "g", lo, table)
    assert view.keep_view("r", "g", lo, table, seen)
    assert view.views["r"].base == "g" and "r" not in view.data
    _assert_same_blocks(view, ref, "r")

    # Sigmoid-like on the Relu's integers: a view of "g" through the composed table
    lo2, seen2 = _presence(ref, "r")
    table2, _, _ = _table(lo2, seen2, lambda q: 15 - (q % 7))
    _store_through(ref, "s", "r", lo2, table2)
    assert view.keep_view("s", "r", lo2, table2, seen2)
    assert view.views["s"].base == "g" and view.views["s"].lo == lo
    _assert_same_blocks(view, ref, "s")
    if budget == 0:
        assert view.data.spilled_bytes * 3 == ref.data.spilled_bytes  # g only, not r and s

    # the base stays while a view of it lives
    view.release("g")
    assert "g" in view.data
    view.release("r")
    assert "g" in view.data and "r" not in view.views
    _assert_same_blocks(view, ref, "s")
    view.release("s")
    assert "g" not in view.data and not view.views
    view.close()
    ref.close()


def test_a_view_with_no_reader_keeps_nothing_and_a_non_monotone_quantizer_stores() -> None:
    blocks = [np.arange(12).reshape(4, 3) - 4]
    store = _base_store(1 << 20, blocks)
    lo, seen = _presence(store, "g")
    table, _, _ = _table(lo, seen, lambda q: np.maximum(q, 0))
    store.tensors["r"].consumers_left = 0  # a graph output only
    assert store.keep_view("r", "g", lo, table, seen)
    assert "r" not in store.views and store.tensors["r"].qmin is None
    store.tensors["s"].quantizer = _quantizer(5, 0.0, 0.0)
    store.tensors["s"].quantizer.scale = np.array([1.0, 2.0, 1.0])  # per channel
    assert not store.keep_view("s", "g", lo, table, seen)
    assert "s" not in store.views


def test_view_stored_ints_are_the_store_narrowing() -> None:
    wide = TableView("g", 0, np.array([-(1 << 40), 5, 70_000], dtype=np.int64))
    base = np.array([[1, 1], [1, 1]], dtype=np.int8)
    assert wide.stored(base).dtype == np.int8  # as TensorStore.put narrows an int64 block
    assert wide.stored(np.array([0, 2], dtype=np.int8)).dtype == np.int64
    assert wide.stored(np.zeros((0, 2), dtype=np.int8)).dtype == np.int64


# --- whole walks: views against stored outputs --------------------------------------------


def assert_same_module(a: Any, b: Any, x: np.ndarray) -> None:
    """Identical calibration state and outputs (one or several graph outputs)."""
    assert module_state(a) == module_state(b)
    pairs = [
        (a.quantized_forward(a.quantize_input(x)), b.quantized_forward(b.quantize_input(x))),
        (a.forward(x), b.forward(x)),
    ]
    for got, want in pairs:
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert np.asarray(g).dtype == np.asarray(w).dtype
            np.testing.assert_array_equal(g, w)


def _never_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WalkStore, "keep_view", lambda *_: False)


def _count_views(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    made: Counter[str] = Counter()
    keep = WalkStore.keep_view

    def counting(self: WalkStore, out: str, base: str, *args: Any) -> bool:
        done = keep(self, out, base, *args)
        if out in self.views:
            made[f"{out}<-{self.views[out].base}"] += 1
        return done

    monkeypatch.setattr(WalkStore, "keep_view", counting)
    return made


def _both(
    monkeypatch: pytest.MonkeyPatch, model: Any, x: np.ndarray, **kwargs: Any
) -> tuple[Any, Any, Counter[str]]:
    """(with views, with stored outputs, the views made)."""
    return build_with_and_without(monkeypatch, model, x, _count_views, _never_view, **kwargs)


def _diamond() -> Any:
    """g0 → Relu → r read by a Gemm that re-quantizes it and by an Add (with g0) that does
    not; r is also a graph output; Sigmoid(g1) is a graph output nobody reads; Relu →
    Sigmoid → Gemm is a view of a view."""
    rng = np.random.default_rng(4)
    inits = {
        "w0": rng.normal(size=(8, 10)).astype(np.float32) / 3,
        "b0": rng.normal(size=8).astype(np.float32) / 5,
        "w1": rng.normal(size=(6, 8)).astype(np.float32) / 3,
        "w2": rng.normal(size=(3, 8)).astype(np.float32) / 3,
        "w3": rng.normal(size=(2, 8)).astype(np.float32) / 3,
    }
    nodes = [
        gemm_node("x", "w0", "b0", "g0", "gemm0"),
        helper.make_node("Relu", ["g0"], ["r"], name="relu"),
        gemm_node("r", "w1", None, "g1", "gemm1"),
        helper.make_node("Sigmoid", ["g1"], ["s1"], name="sig_out"),
        helper.make_node("Add", ["r", "g0"], ["a"], name="add"),
        gemm_node("a", "w2", None, "y", "gemm2"),
        helper.make_node("Sigmoid", ["r"], ["sr"], name="sig_r"),
        gemm_node("sr", "w3", None, "z", "gemm3"),
    ]
    outputs = [("y", [None, 3]), ("s1", [None, 6]), ("r", [None, 8]), ("z", [None, 2])]
    return make_model(nodes, [("x", [None, 10])], outputs, inits)


@pytest.mark.parametrize("budget", [0, 1 << 30])
@pytest.mark.parametrize("batch_size", [64, 10_000])
def test_views_calibrate_as_stored_outputs(
    monkeypatch: pytest.MonkeyPatch, budget: int, batch_size: int
) -> None:
    model = _diamond()
    lazy, stored, made = _both(
        monkeypatch, model, X, n_bits=6, batch_size=batch_size, memory_budget=budget
    )
    assert_same_module(lazy, stored, X[:50] * 1.2)
    assert made == Counter({"r<-g0": 1, "sr<-g0": 1})  # s1 has no reader: no view


def test_views_with_rounding_and_narrow_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mlp([10, 16, 12, 4], act="Relu", seed=3)
    for rounding in (None, 4):
        lazy, stored, made = _both(
            monkeypatch, model, X, n_bits=6, batch_size=100, rounding_threshold_bits=rounding
        )
        assert_same_module(lazy, stored, X[:40])
        assert made == Counter({"a0<-g0": 1, "a1<-g1": 1})


def test_views_are_not_spilled(monkeypatch: pytest.MonkeyPatch) -> None:
    rows, hidden = 500, (16, 12)
    model = mlp([10, *hidden, 4], act="Relu", seed=5)
    spilled = {}
    for lazy in (True, False):
        with monkeypatch.context() as m:
            if not lazy:
                _never_view(m)
            result = quantize_module(model, X[:rows], n_bits=6, block_rows=64, memory_budget=0)
        spilled[lazy] = result["spilled_bytes"]
    # x is caller-held (never spilled); each Gemm output is one int8 per value
    assert spilled[True] == rows * sum(hidden)
    assert spilled[False] == 2 * rows * sum(hidden)  # and so was each Relu output


@settings(max_examples=60, deadline=None)
@given(
    lo=st.integers(-100, 100),
    size=st.integers(1, 40),
    rows=st.integers(0, 30),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.int8, np.int16, np.int32]),
)
def test_composed_tables_are_two_lookups(
    lo: int, size: int, rows: int, seed: int, dtype: Any
) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(lo, lo + size, size=(rows, 3)).astype(np.int16)
    inner = rng.integers(-20, 20, size=size).astype(np.int8)
    lo2 = int(inner.min())
    outer = rng.integers(-1000, 1000, size=int(inner.max()) - lo2 + 1).astype(dtype)
    view = TableView("g", lo, inner)
    twice = view.ints(base)
    if twice.size:
        twice = _core.int_lookup(twice, lo2, outer)
    once = view.then(lo2, outer).ints(base)
    assert once.dtype == (twice.dtype if rows else np.int64)
    np.testing.assert_array_equal(once, twice)
