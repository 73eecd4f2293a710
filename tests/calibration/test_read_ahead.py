"""Reading the calibration source ahead (``streaming.read_ahead``): the same items in the same
order, the source advanced by one helper thread at a time, its errors raised where the item is
asked for, an early stop that reads at most the batches on their way (up to
``READ_AHEAD_BATCHES``, fewer when they would pass ``READ_AHEAD_BYTES``, one for batches of
unknown size), and the same module."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from fhequant import build_quantized_module
from fhequant.quantized import streaming
from fhequant.quantized.streaming import read_ahead
from ptq_helpers import mlp


class Source:
    """A re-iterable that records which thread advanced it and whether two reads overlapped."""

    def __init__(self, sizes: list[int], fail_at: int | None = None) -> None:
        self.sizes = sizes
        self.fail_at = fail_at
        self.reads = 0
        self.threads: set[str] = set()
        self.active = 0
        self.overlapped = False
        self.lock = threading.Lock()

    def __iter__(self) -> Iterator[np.ndarray]:
        for index, rows in enumerate(self.sizes):
            with self.lock:
                self.active += 1
                self.overlapped |= self.active > 1
            self.threads.add(threading.current_thread().name)
            self.reads += 1
            try:
                if index == self.fail_at:
                    raise OSError(f"batch {index} is unreadable")
                rng = np.random.default_rng(index)
                batch = rng.normal(size=(rows, 6)).astype(np.float32)
            finally:
                with self.lock:
                    self.active -= 1
            yield batch


def test_same_items_in_order_read_by_one_helper_thread() -> None:
    source = Source([5, 1, 7, 3, 9])
    got = list(read_ahead(source))
    want = list(Source([5, 1, 7, 3, 9]))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert source.threads and all(n.startswith("fhequant-read-ahead") for n in source.threads)
    assert not source.overlapped
    assert list(read_ahead([])) == []


def test_a_source_error_is_raised_at_its_item() -> None:
    seen = []
    with pytest.raises(OSError, match="batch 2 is unreadable"):
        for batch in read_ahead(Source([4, 4, 4, 4], fail_at=2)):
            seen.append(batch)
    assert len(seen) == 2


def test_an_early_stop_reads_at_most_the_batches_on_their_way() -> None:
    source = Source([3] * 10)
    items = read_ahead(source)
    for _ in range(3):
        next(items)
    items.close()  # waits for the reads in flight
    assert streaming.READ_AHEAD_BATCHES > 1
    assert source.reads == 3 + streaming.READ_AHEAD_BATCHES


def test_large_batches_are_read_one_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "READ_AHEAD_BYTES", 2 * 3 * 6 * 4 - 1)  # under two batches
    source = Source([3] * 10)
    items = read_ahead(source)
    for _ in range(3):
        next(items)
    items.close()
    assert source.reads == 4


def test_batches_of_unknown_size_are_read_one_ahead() -> None:
    reads = []

    def rows() -> Iterator[list[float]]:
        for i in range(10):
            reads.append(i)
            yield [float(i)] * 4

    items = read_ahead(rows())
    assert [next(items) for _ in range(3)] == [[0.0] * 4, [1.0] * 4, [2.0] * 4]
    items.close()
    assert len(reads) == 4


def test_batch_sizes() -> None:
    a, b = np.zeros((4, 3), np.float32), np.zeros(5, np.int64)
    assert streaming._nbytes(a) == 48
    assert streaming._nbytes((a, b)) == 88
    assert streaming._nbytes({"x": a, "y": [b, b]}) == 128
    assert streaming._nbytes((a, "label")) is None
    assert streaming._nbytes(3.0) is None


@pytest.mark.parametrize("sizes", [[100] * 12, [37, 250, 1, 90, 310, 12]])
def test_the_module_is_the_same_without_read_ahead(
    monkeypatch: pytest.MonkeyPatch, sizes: list[int]
) -> None:
    model = mlp([6, 16, 12, 3], act="Relu", seed=3)
    source = Source(sizes)
    kwargs = {"n_bits": 5, "batch_size": 128}
    ahead = build_quantized_module(model, source, **kwargs)
    assert any(n.startswith("fhequant-read-ahead") for n in source.threads)
    monkeypatch.setattr(streaming, "READ_AHEAD", False)
    plain_source = Source(sizes)
    plain = build_quantized_module(model, plain_source, **kwargs)
    assert plain_source.threads == {threading.current_thread().name}
    assert ahead.dumps() == plain.dumps()
    x = np.concatenate(list(Source(sizes)))[:40]
    np.testing.assert_array_equal(ahead.forward(x), plain.forward(x))
