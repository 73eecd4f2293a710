"""pytest plugin: the test run ends with pytest's own exit status, even after FHE circuits ran.

Once a concrete-python circuit has run in a process, concrete's exit handler would end the
process with status 0 (see :mod:`fhequant._concrete`), so a failing test run would look green
to CI. fhequant removes that handler whenever it loads concrete; this plugin also covers test
suites that drive concrete directly. Enable it with ``-p fhequant.pytest_plugin`` (fhequant's own
``pyproject.toml`` does so in ``addopts``).

After the session has finished and every other plugin has unconfigured (the terminal summary
is written by then), if concrete is loaded, the plugin removes concrete's handler, flushes
standard output, standard error and logging, and ends the process with the session's exit
status (``os._exit``): 0 all passed, 1 some failed, 2 interrupted, 3 internal error, 4 usage
error, 5 no tests collected. Processes that never loaded concrete exit normally.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest

from fhequant._concrete import preserve_exit_status

__all__ = ["pytest_configure", "pytest_sessionstart", "pytest_unconfigure"]

_SESSION = pytest.StashKey[pytest.Session]()
# The first config configured in this process: an in-process run inside it (pytester's
# runpytest) must not end the process.
_outer: list[pytest.Config] = []


def pytest_configure(config: pytest.Config) -> None:
    """Remember the outermost config of the process."""
    if not _outer:
        _outer.append(config)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Keep the session, whose ``exitstatus`` is final once the config unconfigures."""
    session.config.stash[_SESSION] = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process with the session's exit status if concrete was loaded."""
    session = config.stash.get(_SESSION, None)
    if session is None or not _outer or config is not _outer[0]:
        return
    _outer.clear()
    if "concrete.compiler" not in sys.modules:
        return
    preserve_exit_status()
    status = int(session.exitstatus)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os._exit(status)
