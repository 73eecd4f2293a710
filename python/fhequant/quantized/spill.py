"""The spill file of the calibration store, written behind the walk (docs/calibration-throughput.md,
ninth round of issue 16).

Copying a block into the system's file cache costs what touching new memory costs: on the
benchmark's virtual machine about 4 s per GiB the first time, a third of the 10M-row
calibration, all of it on the thread that runs the walk. :class:`SpillFile` hands each write
to one helper thread instead, so the copy runs beside the walk's own work (the source's next
batch, the kernels), at most :data:`PENDING_BYTES` behind it.

Writes and reads are positional (``os.pwrite``, ``os.preadv``: no shared file offset), so a
read never waits for anything but the write of its own block. The helper takes the writes in
the order they were made, so a region of the file that a later block reuses is always written
after the block that held it before. Where the system has no positional calls, every write is
made at once on the caller's thread, as before.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

__all__ = ["PENDING_BYTES", "WRITE_BEHIND", "SpillFile"]

#: Write spilled blocks on a helper thread (False: on the caller's thread, at once).
WRITE_BEHIND = True
#: Bytes of blocks waiting to be written at most; beyond, a write waits for the oldest.
PENDING_BYTES = 32 * 1024 * 1024

_POSITIONAL = hasattr(os, "pwrite") and hasattr(os, "preadv")


class SpillFile:
    """A raw file of spilled blocks: :meth:`write` a block at an offset (maybe later, by the
    helper thread), :meth:`read` it back into an array.

    Args:
        path: the file to create (deleted by the store's temporary directory).
    """

    def __init__(self, path: str) -> None:
        self.name = path
        self._file = open(path, "w+b", buffering=0)  # noqa: SIM115 - closed by close()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Future[None], int]] = deque()
        self._pending_bytes = 0

    def write(self, data: np.ndarray, offset: int, owned: bool) -> Future[None] | None:
        """Write the bytes of ``data`` (C-contiguous) at ``offset``.

        Args:
            data: the block.
            offset: where in the file.
            owned: no one else holds ``data`` (else it is copied before a write that
                happens later: the caller may fill it again).

        Returns:
            The write's future when the helper thread makes it (:meth:`read` waits for it),
            None when it is done.
        """
        if not (WRITE_BEHIND and _POSITIONAL) or not data.nbytes:
            self._drain()  # a region written at once after every earlier write
            self._transfer(data, offset, "write")
            return None
        if not owned:
            data = np.array(data, copy=True)
        # settle the writes already made, then wait while too many bytes are pending
        while self._pending and (
            self._pending[0][0].done() or self._pending_bytes + data.nbytes > PENDING_BYTES
        ):
            self._wait_oldest()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fhequant-spill")
        future = self._pool.submit(self._transfer, data, offset, "write")
        self._pending.append((future, data.nbytes))
        self._pending_bytes += data.nbytes
        return future

    def read(self, out: np.ndarray, offset: int, written: Future[None] | None) -> None:
        """Fill ``out`` (C-contiguous) from ``offset``, once its write (``written``) is done.

        Raises:
            OSError: the write failed, or the file ends before ``out`` is full.
        """
        if written is not None:
            written.result()
        self._transfer(out, offset, "read")

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
                future, _ = self._pending.popleft()
                future.exception()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self._pending_bytes = 0
            self._file.close()

    def _transfer(self, array: np.ndarray, offset: int, way: str) -> None:
        """Read the file into ``array`` (``way`` "read") or write ``array`` into it ("write")
        from ``offset``, in as many calls as the system needs."""
        view = array.data.cast("B") if array.size else memoryview(b"")
        fd = self._file.fileno()
        done = 0
        while done < view.nbytes:
            rest, at = view[done:], offset + done
            if _POSITIONAL:
                n = os.preadv(fd, [rest], at) if way == "read" else os.pwrite(fd, rest, at)
            else:
                self._file.seek(at)
                n = self._file.readinto(rest) if way == "read" else self._file.write(rest)
            if not n:
                raise OSError(f"calibration spill file {self.name}: short {way}")
            done += n

    def _wait_oldest(self) -> None:
        future, nbytes = self._pending.popleft()
        self._pending_bytes -= nbytes
        future.result()  # a failed write is reported by the next spill

    def _drain(self) -> None:
        while self._pending:
            self._wait_oldest()
