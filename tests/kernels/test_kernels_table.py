"""The table kernels ``_core.int_presence`` and ``_core.int_lookup`` on the narrow dtypes the
calibration stores, against numpy: several parallel chunks, the int8 byte-shuffle and
byte-permute lookups (whole byte range, entries that fit int8 or not; ``_core.int_lookup_permute``
switches the permutes off), and the presence marks' early stop (a value that
occurs once, late, or a value outside the table after the span is complete)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhequant import _core
from fhequant.errors import QuantizationError

#: elements per parallel chunk of the Rust kernels (kernels::quant::CHUNK)
CHUNK = 1 << 15


def _want_presence(q: np.ndarray, lo: int, size: int) -> np.ndarray:
    want = np.zeros(size, dtype=bool)
    want[q.reshape(-1).astype(np.int64) - lo] = True
    return want


@settings(max_examples=120, deadline=None)
@given(
    dtype=st.sampled_from([np.int8, np.int16]),
    table_dtype=st.sampled_from([np.int8, np.int16, np.int32, np.int64]),
    span=st.integers(1, 256),
    n=st.sampled_from([1, 31, 32, 33, 1000, CHUNK - 1, CHUNK + 5, 3 * CHUNK + 17]),
    wide_entries=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_presence_and_lookup_match_numpy_on_large_narrow_blocks(
    dtype: Any, table_dtype: Any, span: int, n: int, wide_entries: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    lo = int(rng.integers(int(info.min), int(info.max) - span + 2))
    lo = max(int(info.min), min(lo, int(info.max) - span + 1))
    extra = int(rng.integers(0, 4))  # table entries past the values' span
    size = min(span + extra, int(info.max) - lo + 1)
    # a sparse or dense subset of the span, one of its values placed once at a random spot
    present = rng.choice(span, size=int(rng.integers(1, span + 1)), replace=False) + lo
    q = rng.choice(present[1:] if present.size > 1 else present, size=n).astype(dtype)
    q[int(rng.integers(0, n))] = present[0]
    tinfo = np.iinfo(table_dtype)
    bound = (int(tinfo.min), int(tinfo.max)) if wide_entries else (-128, 127)
    table = rng.integers(bound[0], bound[1], size=size, endpoint=True).astype(table_dtype)

    np.testing.assert_array_equal(_core.int_presence(q, lo, size), _want_presence(q, lo, size))
    out = _core.int_lookup(q, lo, table)
    assert out.dtype == table.dtype
    np.testing.assert_array_equal(out, table[q.astype(np.int64) - lo])
    # the AVX2 byte shuffles where the byte permutes (AVX-512 VBMI) ran: the same values
    before = _core.int_lookup_permute()
    try:
        _core.int_lookup_permute(False)
        np.testing.assert_array_equal(_core.int_lookup(q, lo, table), out)
    finally:
        _core.int_lookup_permute(before)
    into = np.empty(q.shape, dtype=table.dtype)
    assert _core.int_lookup(q, lo, table, into) is into
    np.testing.assert_array_equal(into, out)


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
@pytest.mark.parametrize("position", [0, CHUNK - 1, CHUNK, 2 * CHUNK + 3])
def test_presence_finds_a_value_present_once_after_the_others(dtype: Any, position: int) -> None:
    # 0 and 2 fill every chunk; 1 (inside their span) occurs once: marking must not stop
    # while the span [0, 2] is incomplete
    q = np.tile(np.array([0, 2], dtype=dtype), (2 * CHUNK + 8) // 2)
    q[position] = 1
    np.testing.assert_array_equal(_core.int_presence(q, 0, 3), [True, True, True])
    q[position] = 2
    np.testing.assert_array_equal(_core.int_presence(q, 0, 3), [True, False, True])


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_presence_and_lookup_reject_a_late_value_outside_the_table(dtype: Any) -> None:
    # every value of the table is present early: the late outlier must still be caught
    q = np.tile(np.arange(4, dtype=dtype), CHUNK // 2)
    q[-1] = 9
    with pytest.raises(QuantizationError, match="outside the table's range"):
        _core.int_presence(q, 0, 4)
    with pytest.raises(QuantizationError, match="outside the table's range"):
        _core.int_lookup(q, 0, np.arange(4, dtype=np.int8))
    q[-1] = -1
    with pytest.raises(QuantizationError, match="outside the table's range"):
        _core.int_presence(q, 0, 4)


def test_lookup_reads_only_the_span_entries_for_its_byte_table() -> None:
    # the values use entries 2..5, which fit int8; entries outside them do not: the byte
    # shuffle applies to this block, and must give the entries of the right offsets
    q = np.tile(np.array([3, 4, 5, 6], dtype=np.int8), 100)
    table = np.array([1000, -1000, 7, -8, 9, 127, 4000], dtype=np.int16)
    np.testing.assert_array_equal(_core.int_lookup(q, 1, table), table[q.astype(np.int64) - 1])
    table[3] = 300  # an entry in the span that does not fit int8: the wide path
    np.testing.assert_array_equal(_core.int_lookup(q, 1, table), table[q.astype(np.int64) - 1])


def test_lookup_of_every_int8_through_a_full_byte_table() -> None:
    q = np.arange(-128, 128, dtype=np.int8).repeat(3)[::-1].copy()
    for table_dtype in (np.int8, np.int64):
        table = (np.arange(256)[::-1] - 128).astype(table_dtype)
        np.testing.assert_array_equal(
            _core.int_lookup(q, -128, table), table[q.astype(np.int64) + 128]
        )
    assert _core.int_presence(q, -128, 256).all()


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
@pytest.mark.parametrize("rare", [1, 5, 9])
def test_presence_finds_rare_tail_values_in_a_bell_shaped_block(dtype: Any, rare: int) -> None:
    # a layer's output: dense in the middle, a few values of the span occur once or never,
    # in the middle of the data and at the end of a chunk (the compare passes' edges)
    rng = np.random.default_rng(rare)
    q = np.clip(np.rint(rng.normal(size=3 * CHUNK + 11) * 4), -20, 20).astype(dtype)
    q[q == -15] = 0
    q[q == 14] = 0
    spots = rng.choice(q.size, size=rare, replace=False)
    q[spots] = rng.choice([-15, 14, -20, 20], size=rare)
    q[CHUNK - 1] = 13 if dtype == np.int8 else q[CHUNK - 1]
    q[-1] = -20
    np.testing.assert_array_equal(_core.int_presence(q, -20, 41), _want_presence(q, -20, 41))
