"""The spill file of the calibration store: direct I/O, written behind the walk
(docs/calibration-throughput.md, the ninth and twelfth rounds of issue 16).

Copying a block into the system's file cache costs what touching new memory costs: on the
benchmark's virtual machine about 4 s per GiB the first time, a third of the 10M-row
calibration. Where the system and the file system allow it the file is opened for direct I/O
(``O_DIRECT``): a write goes from a reused, aligned staging buffer to the disk and a read from
the disk into the block it fills, so spilling touches no new memory at all (the disk's own
bandwidth is the cost: on that machine 1.2 GB/s each way for 0.1 s of CPU per GiB). Elsewhere
(tmpfs, no ``O_DIRECT``, ``DIRECT = False``) the file is cached as before.

:class:`SpillFile` hands each write to one helper thread, so it runs beside the walk's own
work at most :data:`PENDING_BYTES` behind it. Writes and reads are positional (``os.pwrite``,
``os.preadv``: no shared file offset), so a read never waits for anything but the write of its
own block. The helper takes the writes in the order they were made, so a region of the file
that a later block reuses is always written after the block that held it before. Where the
system has no positional calls, every write is made at once on the caller's thread.
"""

from __future__ import annotations

import contextvars
import os
import tempfile
import threading
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = [
    "ALIGN",
    "DELETE_BEHIND",
    "DIRECT",
    "PENDING_BYTES",
    "WRITE_BEHIND",
    "SpillFile",
    "delete_directory",
    "wait_deletions",
]

#: Write spilled blocks on a helper thread (False: on the caller's thread, at once).
WRITE_BEHIND = True
#: Bytes of blocks waiting to be written at most; beyond, a write waits for the oldest.
PENDING_BYTES = 32 * 1024 * 1024
#: Open spill files for direct I/O where the system allows it (False: the file cache).
DIRECT = True
#: Offsets, lengths and buffers of direct I/O are multiples of this many bytes.
ALIGN = 4096
#: Staging buffers kept for the next writes at most (direct I/O).
_KEPT_BUFFERS = 16

_POSITIONAL = hasattr(os, "pwrite") and hasattr(os, "preadv")
#: Delete a closed store's spill directory on a helper thread (False: before close returns).
DELETE_BEHIND = True

_deleting: set[threading.Thread] = set()
_deleting_lock = threading.Lock()


def delete_directory(directory: tempfile.TemporaryDirectory[str]) -> None:
    """Delete a closed store's spill directory, by default on a helper thread: the file
    system takes a few hundred milliseconds to free a spill file of several GB (0.28-0.34 s
    at the end of the 10M-row benchmark), which the caller of the calibration need not wait
    for. The thread is not a daemon, so the interpreter finishes it before it exits;
    :func:`wait_deletions` waits for it. A directory that cannot be deleted is reported by a
    ``RuntimeWarning`` naming it."""
    if not DELETE_BEHIND:
        _delete(directory)
        return
    thread = threading.Thread(
        target=_delete, args=(directory,), name="fhequant-spill-delete", daemon=False
    )
    with _deleting_lock:
        _deleting.add(thread)
    thread.start()


def wait_deletions() -> None:
    """Wait until every spill directory handed to :func:`delete_directory` is deleted."""
    with _deleting_lock:
        threads = list(_deleting)
    for thread in threads:
        thread.join()


def _delete(directory: tempfile.TemporaryDirectory[str]) -> None:
    try:
        directory.cleanup()
    except OSError as error:
        warnings.warn(
            f"could not delete the calibration spill directory {directory.name}: {error}",
            RuntimeWarning,
            stacklevel=1,
        )
    finally:
        with _deleting_lock:
            _deleting.discard(threading.current_thread())


def aligned_empty(nbytes: int, align: int) -> np.ndarray:
    """An uninitialised uint8 array of ``nbytes`` whose data starts at a multiple of
    ``align``."""
    raw = np.empty(nbytes + align, dtype=np.uint8)
    skip = -raw.ctypes.data % align
    return raw[skip : skip + nbytes]


class SpillFile:
    """A raw file of spilled blocks: :meth:`write` a block at an offset (maybe later, by the
    helper thread), :meth:`read` it back as an array.

    Every block takes :meth:`span` bytes of the file (its bytes rounded up to :attr:`align`),
    so the offsets the store hands out stay aligned for direct I/O.

    Args:
        path: the file to create (deleted by the store's temporary directory).
    """

    def __init__(self, path: str) -> None:
        self.name = path
        #: 1 for a cached file, :data:`ALIGN` for direct I/O
        self.align = 1
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        fd = -1
        if DIRECT and _POSITIONAL and hasattr(os, "O_DIRECT"):
            try:
                fd = os.open(path, flags | os.O_DIRECT, 0o600)
                self.align = ALIGN
            except OSError:  # the file system refuses direct I/O (tmpfs): cached
                fd = -1
        self._fd = fd if fd >= 0 else os.open(path, flags, 0o600)
        self._pool: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Future[None], int, np.ndarray | None]] = deque()
        self._pending_bytes = 0
        self._buffers: list[np.ndarray] = []

    @property
    def direct(self) -> bool:
        """Whether the file bypasses the system's file cache."""
        return self.align > 1

    def span(self, nbytes: int) -> int:
        """The bytes of the file a block of ``nbytes`` takes."""
        return -(-nbytes // self.align) * self.align

    def write(self, data: np.ndarray, offset: int, owned: bool) -> Future[None] | None:
        """Write the bytes of ``data`` (C-contiguous) at ``offset`` (a multiple of
        :attr:`align`).

        Args:
            data: the block.
            offset: where in the file.
            owned: no one else holds ``data`` (else it is copied before a write that
                happens later: the caller may fill it again).

        Returns:
            The write's future when the helper thread makes it (:meth:`read` waits for it),
            None when it is done.
        """
        flat = data.reshape(-1).view(np.uint8) if data.size else np.empty(0, np.uint8)
        if not (WRITE_BEHIND and _POSITIONAL) or not flat.size:
            self._drain()  # a region written at once after every earlier write
            staged = self._stage(flat, copy=True)
            try:
                self._transfer(
                    flat if staged is None else staged[: self.span(flat.size)], offset, "write"
                )
            finally:
                self._give_back(staged)
            return None
        # settle the writes already made, then wait while too many bytes are pending
        while self._pending and (
            self._pending[0][0].done() or self._pending_bytes + flat.size > PENDING_BYTES
        ):
            self._wait_oldest()
        staged = self._stage(flat, copy=not owned)
        if staged is None and not owned:
            flat = flat.copy()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fhequant-spill")
        future = self._pool.submit(self._write_staged, flat, staged, offset, owned)
        self._pending.append((future, flat.size, staged))
        self._pending_bytes += flat.size
        return future

    def read(
        self, shape: tuple[int, ...], dtype: np.dtype[Any], offset: int, written: Any
    ) -> np.ndarray:
        """The block of ``shape`` and ``dtype`` at ``offset``, once its write (``written``,
        a future or None) is done.

        Raises:
            OSError: the write failed, or the file ends before the block does.
        """
        if written is not None:
            written.result()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not nbytes:
            return np.empty(shape, dtype=dtype)
        raw = aligned_empty(self.span(nbytes), self.align)
        self._transfer(raw, offset, "read")
        return raw[:nbytes].view(dtype).reshape(shape)

    def read_later(
        self, shape: tuple[int, ...], dtype: np.dtype[Any], offset: int, written: Any
    ) -> Future[np.ndarray]:
        """:meth:`read` on the reading helper thread (in the caller's context, so numpy
        allocates the block as the caller would): the block of a later step, read from the
        disk while the caller works. Without positional calls the read is made at once."""
        if not _POSITIONAL:
            done: Future[np.ndarray] = Future()
            try:
                done.set_result(self.read(shape, dtype, offset, written))
            except BaseException as error:  # reported by result(), as the helper's would be
                done.set_exception(error)
            return done
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fhequant-read")
        context = contextvars.copy_context()
        return self._reader.submit(context.run, self.read, shape, dtype, offset, written)

    def flush(self) -> None:
        """Wait until every write made so far is in the file.

        Raises:
            OSError: a write failed.
        """
        self._drain()

    def close(self) -> None:
        """Wait for the pending writes (their errors no longer matter), then close."""
        try:
            while self._pending:
                future, _, _ = self._pending.popleft()
                future.exception()
        finally:
            if self._reader is not None:
                self._reader.shutdown(wait=True, cancel_futures=True)
                self._reader = None
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self._pending_bytes = 0
            self._buffers.clear()
            os.close(self._fd)

    def _stage(self, flat: np.ndarray, copy: bool) -> np.ndarray | None:
        """A kept (or new) aligned buffer of at least the block's span, starting with
        ``flat`` when ``copy``; None for a cached file (written from ``flat`` itself)."""
        if not self.direct:
            return None
        span = self.span(flat.size)
        fits = [i for i, b in enumerate(self._buffers) if b.size >= span]
        if fits:
            staged = self._buffers.pop(min(fits, key=lambda i: self._buffers[i].size))
        else:
            staged = aligned_empty(span, self.align)
        if copy:
            staged[: flat.size] = flat
        return staged

    def _give_back(self, staged: np.ndarray | None) -> None:
        if staged is not None:
            self._buffers.append(staged)
            if len(self._buffers) > _KEPT_BUFFERS:
                self._buffers.remove(min(self._buffers, key=lambda b: b.size))

    def _write_staged(
        self, flat: np.ndarray, staged: np.ndarray | None, offset: int, owned: bool
    ) -> None:
        """The helper's write: the block copied into its staging buffer (an owned block,
        the copy left to this thread), then the buffer (or, cached, the block) written."""
        if staged is None:
            self._transfer(flat, offset, "write")
            return
        if owned:
            staged[: flat.size] = flat
        self._transfer(staged[: self.span(flat.size)], offset, "write")

    def _transfer(self, array: np.ndarray, offset: int, way: str) -> None:
        """Read the file into ``array`` (uint8, contiguous; ``way`` "read") or write it
        ("write") from ``offset``, in as many calls as the system needs."""
        view = memoryview(array)  # type: ignore[arg-type]
        done = 0
        while done < view.nbytes:
            rest, at = view[done:], offset + done
            if _POSITIONAL:
                n = (
                    os.preadv(self._fd, [rest], at)
                    if way == "read"
                    else os.pwrite(self._fd, rest, at)
                )
            else:
                os.lseek(self._fd, at, os.SEEK_SET)
                if way == "read":
                    chunk = os.read(self._fd, rest.nbytes)
                    rest[: len(chunk)] = chunk
                    n = len(chunk)
                else:
                    n = os.write(self._fd, rest)
            if not n:
                raise OSError(f"calibration spill file {self.name}: short {way}")
            done += n

    def _wait_oldest(self) -> None:
        future, nbytes, staged = self._pending.popleft()
        self._pending_bytes -= nbytes
        try:
            future.result()  # a failed write is reported by the next spill
        finally:
            self._give_back(staged)

    def _drain(self) -> None:
        while self._pending:
            self._wait_oldest()
