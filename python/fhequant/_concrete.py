"""Loading concrete-python, and keeping the process's exit status honest once it has run.

concrete-python registers a Python ``atexit`` handler when ``concrete.compiler`` is first
imported. Once a circuit has run in the process (``simulate``, ``encrypt_run_decrypt``, or
fhequant's ``forward(..., fhe="simulate" | "execute")``), concrete's dataflow runtime is
initialised, and that handler stops it by calling the C library's ``exit(0)`` from inside
Python's own shutdown. The process then ends with status 0 whatever Python was about to
return: ``sys.exit(3)`` exits 0, an uncaught exception exits 0, a failing test run exits 0.
Python atexit handlers registered before concrete was imported never run either.

fhequant removes that handler (:func:`preserve_exit_status`) whenever it loads concrete and
before it runs a circuit. The process then ends through Python's normal shutdown: every other
atexit handler runs, buffered output is flushed, and the status is the one Python computed.
The runtime's worker threads simply end with the process. Scripts that drive concrete
directly, without going through fhequant, can call :func:`preserve_exit_status` themselves
after importing concrete (see ``docs/exit-status.md``).

This module sits at the bottom of the package: it imports only the standard library, and
concrete lazily.
"""

from __future__ import annotations

import atexit
import sys
import warnings
from typing import Any

__all__ = ["fhe_module", "preserve_exit_status"]

# The warnings importing concrete gives through pkg_resources (regexes matched at the start).
_PKG_RESOURCES_DEPRECATED = r"pkg_resources is deprecated as an API"
_DECLARE_NAMESPACE = r"Deprecated call to `pkg_resources\.declare_namespace\('concrete"

# The handler concrete registers, by its name in ``concrete.compiler`` (2.10 and 2.11).
_HANDLER_NAME = "_terminate_df_parallelization"


def preserve_exit_status() -> bool:
    """Stop concrete-python from resetting the process's exit status to 0 at exit.

    Idempotent and cheap; does nothing (and imports nothing) when concrete has not been
    imported yet, so call it after importing concrete. Unregistering a handler that is no
    longer registered is harmless.

    Returns:
        True if concrete's compiler module is loaded and its exit handler is now unregistered,
        False if concrete is not loaded or has no such handler (another version).
    """
    compiler = sys.modules.get("concrete.compiler")
    if compiler is None:
        return False
    handler = getattr(compiler, _HANDLER_NAME, None)
    if handler is None:
        return False
    atexit.unregister(handler)
    return True


def fhe_module() -> Any:
    """``concrete.fhe``, imported with its pkg_resources warnings silenced.

    Every import of concrete by fhequant goes through here, so the exit handler is removed as
    soon as concrete is loaded (:func:`preserve_exit_status`).
    """
    with warnings.catch_warnings():
        # concrete's namespace package calls pkg_resources.declare_namespace, which warns
        # twice (setuptools >= 67): these two messages only, any other warning still shows
        warnings.filterwarnings("ignore", _PKG_RESOURCES_DEPRECATED, UserWarning)
        warnings.filterwarnings("ignore", _DECLARE_NAMESPACE, DeprecationWarning)
        from concrete import fhe
    preserve_exit_status()
    return fhe
