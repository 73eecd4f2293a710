"""Progress of the long FHE steps: compile, key generation and encrypted execution.

Compiling a module, generating its keys (tens of seconds for a small MLP) and running
encrypted samples (seconds each) print nothing of their own, so fhequant reports them on
stderr: a tqdm bar over samples and ``fhequant: ...`` lines around the single long calls.

Shown when stderr is a terminal, or when asked for: ``verbose=True`` where a function takes
it (``compile``), or process-wide with :func:`show_progress` (True: always, also in logs and
notebooks without a terminal; False: never; None: on a terminal, the default). Calibration
has its own bar (``build_quantized_module(verbose=...)``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

__all__ = ["progress_enabled", "samples", "show_progress", "step"]

T = TypeVar("T")

_setting: bool | None = None


def show_progress(enabled: bool | None) -> None:
    """Show (True), hide (False) or auto-detect (None: on a terminal) the progress of
    compile, key generation and encrypted execution, for the whole process.

    Args:
        enabled: the setting; ``verbose=True`` of a call still shows that call's progress.
    """
    global _setting
    _setting = None if enabled is None else bool(enabled)


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


def progress_enabled(verbose: bool | None = None) -> bool:
    """Whether to report progress: ``verbose=True``, else the :func:`show_progress` setting,
    else whether stderr is a terminal."""
    if verbose:
        return True
    if _setting is not None:
        return _setting
    return _stderr_is_terminal()


def _say(text: str) -> None:
    print(f"fhequant: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(what: str, enabled: bool) -> Iterator[None]:
    """Print ``what ...`` before the block and ``what: done in N s`` after it (if enabled).

    Args:
        what: the step, e.g. "generating the keys".
        enabled: whether to print (``progress_enabled(...)``).

    Yields:
        None.
    """
    if not enabled:
        yield
        return
    _say(f"{what} ...")
    start = time.perf_counter()
    yield
    _say(f"{what}: done in {time.perf_counter() - start:.1f} s")


def samples(items: Sequence[T], enabled: bool, what: str) -> Iterable[T]:
    """Iterate over samples with their progress: a tqdm bar on a terminal, one line per
    sample otherwise (and a start/done line for a single sample).

    Args:
        items: the samples.
        enabled: whether to report (``progress_enabled(...)``).
        what: the step, e.g. "FHE execution".

    Returns:
        An iterable over ``items``.
    """
    if not enabled or not items:
        return items
    if len(items) == 1:
        return _one(items, what)
    if _stderr_is_terminal():
        from tqdm.auto import tqdm

        return tqdm(items, desc=what, unit="sample", file=sys.stderr)
    return _lines(items, what)


def _one(items: Sequence[T], what: str) -> Iterator[T]:
    with step(f"{what} (1 sample)", True):
        yield items[0]


def _lines(items: Sequence[T], what: str) -> Iterator[T]:
    start = time.perf_counter()
    n = len(items)
    for i, item in enumerate(items):
        yield item
        elapsed = time.perf_counter() - start
        _say(f"{what}: sample {i + 1}/{n} ({elapsed:.1f} s, {elapsed / (i + 1):.2f} s/sample)")
