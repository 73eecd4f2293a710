"""``_core.AccExtremesStream``: the extremes of a Gemm over pushed blocks (read through an
optional table), reduced on a native thread, against ``int_matmul_acc_extremes`` on each
looked-up block merged as numpy merges them; and its refusals and errors."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import _core
from fhequant.errors import DTypeError, ShapeError


def _operands(rng: np.random.Generator, k: int, m: int, bias: bool) -> dict[str, Any]:
    wq = rng.integers(-31, 32, size=(k, m)).astype(np.int64)
    w = wq / 63.0 + rng.uniform(-1e-3, 1e-3, size=(k, m))
    return {
        "wq": wq,
        "z_w": 0,
        "w": np.ascontiguousarray(w),
        "bias": rng.uniform(-1, 1, size=m) if bias else None,
        "scale": 0.037,
        "zero_point": 3.0,
    }


def _stream(ops: dict[str, Any], table: np.ndarray | None, lo: int, **kw: Any) -> Any:
    return _core.AccExtremesStream(
        table,
        lo,
        ops["wq"],
        ops["z_w"],
        ops["w"],
        ops["bias"],
        ops["scale"],
        ops["zero_point"],
        kw.get("exact", False),
        kw.get("loose", 0.25),
        kw.get("pending", 2),
    )


def _want(ops: dict[str, Any], blocks: list[np.ndarray]) -> tuple[float, float] | None:
    """The merged extremes, or None when there is no value or a block's extreme is zero
    (its own pass materialises that block: the stream stops)."""
    lo = hi = None
    for a in blocks:
        if not a.size:
            continue
        _, blo, bhi, finite = _core.int_matmul_acc_extremes(
            a, ops["wq"], ops["z_w"], ops["w"], ops["bias"], ops["scale"], ops["zero_point"], False
        )
        assert finite
        if blo == 0 or bhi == 0:
            return None
        lo = blo if lo is None else np.minimum(lo, blo)
        hi = bhi if hi is None else np.maximum(hi, bhi)
    return None if lo is None else (float(lo), float(hi))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 70),
    m=st.integers(1, 40),
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=5),
    dtype=st.sampled_from(["int8", "int16", "int32"]),
    table_dtype=st.sampled_from([None, "int8", "int16", "int32"]),
    bias=st.booleans(),
    exact=st.booleans(),
    pending=st.integers(1, 3),
)
def test_the_stream_gives_the_blocks_merged_extremes(
    seed: int,
    k: int,
    m: int,
    sizes: list[int],
    dtype: str,
    table_dtype: str | None,
    bias: bool,
    exact: bool,
    pending: int,
) -> None:
    rng = np.random.default_rng(seed)
    ops = _operands(rng, k, m, bias)
    lo = -20
    blocks = [rng.integers(-20, 21, size=(n, k)).astype(dtype) for n in sizes]
    table = None
    read = blocks
    if table_dtype is not None:
        table = rng.integers(-10, 40, size=41).astype(table_dtype)
        read = [table[b.astype(np.int64) - lo] for b in blocks]
    stream = _stream(ops, table, lo, exact=exact, pending=pending)
    for b in blocks:
        stream.push(b)
    found, refused, counts = stream.finish()
    want = _want(ops, read)
    if want is None:
        assert found is None
        return
    assert refused is None
    assert found == want  # same floats (no zero, no NaN: equality is bit equality)
    assert all(c >= 0 for c in counts)


def test_a_value_outside_the_table_stops_the_stream() -> None:
    rng = np.random.default_rng(1)
    ops = _operands(rng, 8, 4, True)
    stream = _stream(ops, np.arange(5, dtype=np.int8), 0)
    stream.push(np.full((3, 8), 2, dtype=np.int8))
    stream.push(np.full((3, 8), 9, dtype=np.int8))  # 9 - 0 is past the table's 5 entries
    stream.push(np.full((3, 8), 1, dtype=np.int8))
    found, refused, _ = stream.finish()
    assert found is None and refused is not None


def test_bad_operands_and_blocks_are_named() -> None:
    rng = np.random.default_rng(2)
    ops = _operands(rng, 8, 4, True)
    with pytest.raises(ShapeError, match="AccExtremesStream"):
        _core.AccExtremesStream(
            None, 0, ops["wq"], 0, ops["w"][:, :3], None, 1.0, 0.0, False, 0.25, 2
        )
    with pytest.raises(DTypeError, match="table"):
        _stream(ops, np.arange(5, dtype=np.float64), 0)
    stream = _stream(ops, None, 0)
    with pytest.raises(DTypeError, match="int8, int16 or int32"):
        stream.push(np.zeros((3, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        stream.push(np.zeros((8, 3), dtype=np.int8).T)
    assert stream.finish()[0] is None  # nothing pushed
    with pytest.raises(RuntimeError, match="after finish"):
        stream.push(np.zeros((3, 8), dtype=np.int8))
    # finish twice gives the same answer
    assert stream.finish()[0] is None


def test_a_stream_dropped_unfinished_stops_its_thread() -> None:
    rng = np.random.default_rng(3)
    ops = _operands(rng, 64, 32, False)
    for _ in range(20):
        stream = _stream(ops, None, 0, pending=1)
        for _ in range(3):
            stream.push(rng.integers(-5, 6, size=(500, 64)).astype(np.int8))
        del stream  # joins the thread before the arrays it reads are released
    tasks = pathlib.Path("/proc/self/task").glob("*/comm")
    assert not [p for p in tasks if p.read_text().startswith("fhequant-ahead")]
