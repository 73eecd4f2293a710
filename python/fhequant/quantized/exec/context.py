"""What an op runs under: context variables, never attributes assigned on an op.

Three things vary from one call of an op to the next and are read deep inside it:

* the executor: forced with :func:`use_executor` (bit-width recording, hinted tracing,
  streamed rounding calibration), else picked from the operands by ``executor_for``;
* the name of the op being run: :func:`run_op` (the module's forward and the bit-width
  analysis) sets it, and every integer node an observer sees is filed under it;
* the debug forward's value tracker: :func:`track_values` (``forward(debug=True)``); ops
  read it through ``QuantizedOp._value_tracker``;
* a float implementation routed for one op: :func:`route_float_impl` (the calibration walk
  uses it for split-independent matmuls, docs/contract.md decision 4); ``QuantizedOp.call_impl``
  asks :func:`routed_float_impl`.

Each is a ``contextvars.ContextVar``, so calls from several threads (or async tasks) on the
same module see only their own settings.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "MODULE",
    "current_op",
    "failed_op",
    "forced_executor",
    "op_context",
    "route_float_impl",
    "routed_float_impl",
    "run_op",
    "track_values",
    "tracked_values",
    "use_executor",
]

#: The op name of nodes created outside any op (module inputs and outputs).
MODULE = "<module>"

_FORCED: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "fhequant_forced_executor", default=None
)
_OP: contextvars.ContextVar[str] = contextvars.ContextVar("fhequant_current_op", default=MODULE)
_TRACKER: contextvars.ContextVar[dict[str, dict[str, Any]] | None] = contextvars.ContextVar(
    "fhequant_value_tracker", default=None
)
_FLOAT_IMPL: contextvars.ContextVar[tuple[Any, Callable[..., Any]] | None] = contextvars.ContextVar(
    "fhequant_routed_float_impl", default=None
)


@contextlib.contextmanager
def use_executor(executor: Any) -> Iterator[Any]:
    """Force an executor for the ops run inside the ``with`` block (this context only).

    Args:
        executor: CLEAR, TRACING or any ``Executor(backend, observer)``.

    Yields:
        The executor.
    """
    token = _FORCED.set(executor)
    try:
        yield executor
    finally:
        _FORCED.reset(token)


def forced_executor() -> Any:
    """The executor forced by :func:`use_executor`, or None."""
    return _FORCED.get()


@contextlib.contextmanager
def op_context(name: str) -> Iterator[None]:
    """Name the op whose integer nodes are created inside the ``with`` block."""
    token = _OP.set(name)
    try:
        yield
    finally:
        _OP.reset(token)


def current_op() -> str:
    """The name set by :func:`op_context` / :func:`run_op`, else ``"<module>"``."""
    return _OP.get()


def run_op(name: str, op: Any, *args: Any, **kwargs: Any) -> Any:
    """``op.q_impl(*args, **kwargs)`` with the op named ``name``; the forced executor's
    observer (if any) is told the op's result.

    Args:
        name: the op's name in the module (its output tensor).
        op: an object with a ``q_impl`` method.
        *args: the op's inputs.
        **kwargs: keyword arguments of q_impl.

    Returns:
        The op's result.
    """
    token = _OP.set(name)
    # a tracing backend tags the op's nodes with its name (concrete's per-tag statistics)
    tag = getattr(getattr(_FORCED.get(), "backend", None), "op_scope", None)
    try:
        with tag(name) if tag is not None else contextlib.nullcontext():
            result = op.q_impl(*args, **kwargs)
    except Exception as exc:
        # the innermost op an error passed through (read by fhequant.fhe: failed_op)
        if getattr(exc, "_fhequant_op", None) is None:
            exc._fhequant_op = name  # type: ignore[attr-defined]
        raise
    finally:
        _OP.reset(token)
    observer = getattr(_FORCED.get(), "observer", None)
    if observer is not None:
        observer.op_output(name, result)
    return result


def failed_op(exc: BaseException) -> str | None:
    """The name of the op (``run_op``) an exception was raised in, or None."""
    name = getattr(exc, "_fhequant_op", None)
    return name if isinstance(name, str) else None


@contextlib.contextmanager
def track_values(tracker: dict[str, dict[str, Any]] | None) -> Iterator[None]:
    """Inside the ``with`` block, the ops store their prepared inputs and accumulators in
    ``tracker`` (op instance name -> key -> value); None tracks nothing."""
    token = _TRACKER.set(tracker)
    try:
        yield
    finally:
        _TRACKER.reset(token)


def tracked_values() -> dict[str, dict[str, Any]] | None:
    """The tracker set by :func:`track_values`, or None."""
    return _TRACKER.get()


@contextlib.contextmanager
def route_float_impl(op: Any, impl: Callable[..., Any]) -> Iterator[None]:
    """Inside the ``with`` block, ``op.call_impl`` first tries ``impl`` (which returns
    NotImplemented for inputs it does not take)."""
    token = _FLOAT_IMPL.set((op, impl))
    try:
        yield
    finally:
        _FLOAT_IMPL.reset(token)


def routed_float_impl(op: Any) -> Callable[..., Any] | None:
    """The float implementation routed for ``op`` by :func:`route_float_impl`, or None."""
    routed = _FLOAT_IMPL.get()
    if routed is None or routed[0] is not op:
        return None
    return routed[1]
