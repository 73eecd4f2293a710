"""The Hypothesis settings profiles of the suite, registered and loaded by tests/conftest.py.

* ``ci``: what CI runs (``.ci/run`` and ``.ci/test`` run with ``CI=true``, which they pass on
  to pytest). ``derandomize=True`` makes every property test draw the same examples on every
  run (Hypothesis derives them from the test's name), and the example database is off, so a
  run depends on nothing but the code: the quantizer, JSON and ONNX-attribute fuzzers cannot
  turn CI red by happening on a new case. The example counts are fixed: each test's own
  ``max_examples``, or this profile's.
* ``dev``: local runs. Hypothesis' default random search (with its local example
  database), so the fuzzers keep exploring. A case found there is a real bug: fix it and
  pin the case with ``@example`` so the ``ci`` profile runs it too.

``HYPOTHESIS_PROFILE=ci`` (or ``dev``) picks a profile explicitly; otherwise a ``CI``
variable that is set and not ``""``, ``0`` or ``false`` selects ``ci``.

Recent Hypothesis releases also load a built-in profile named ``ci`` when they detect a CI
environment; this one replaces it with values written out here, so what CI runs does not
depend on the installed Hypothesis version.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import HealthCheck, settings

__all__ = ["CI_MAX_EXAMPLES", "load_profile", "profile_for"]

#: Examples of a property test that sets no ``max_examples`` of its own, under ``ci``.
CI_MAX_EXAMPLES = 100

_FALSE = ("", "0", "false", "no")


def profile_for(environ: Mapping[str, str]) -> str:
    """``"ci"`` or ``"dev"``, from HYPOTHESIS_PROFILE or else CI in ``environ``."""
    explicit = environ.get("HYPOTHESIS_PROFILE", "").strip().lower()
    if explicit in ("ci", "dev"):
        return explicit
    return "dev" if environ.get("CI", "").strip().lower() in _FALSE else "ci"


_DEFAULT = settings.get_profile("default")
settings.register_profile(
    "ci",
    parent=_DEFAULT,
    derandomize=True,
    database=None,
    max_examples=CI_MAX_EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],  # shared, loaded CI machines
)
settings.register_profile("dev", parent=_DEFAULT)


def load_profile(environ: Mapping[str, str]) -> str:
    """Load the profile ``environ`` selects (before test modules create their settings, which
    inherit from it) and return its name."""
    name = profile_for(environ)
    settings.load_profile(name)
    return name
