"""CI runs the property tests with fixed examples; local runs keep exploring."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypothesis_profiles import profile_for

# Created at import, like the @settings of every fuzz test: it inherits from the profile the
# conftest loaded.
PROBE = settings(max_examples=7)


@pytest.mark.parametrize(
    ("environ", "want"),
    [
        ({}, "dev"),
        ({"CI": "true"}, "ci"),
        ({"CI": "1"}, "ci"),
        ({"CI": "false"}, "dev"),
        ({"CI": ""}, "dev"),
        ({"CI": "true", "HYPOTHESIS_PROFILE": "dev"}, "dev"),
        ({"HYPOTHESIS_PROFILE": "ci"}, "ci"),
    ],
)
def test_profile_selection(environ: dict[str, str], want: str) -> None:
    assert profile_for(environ) == want


def test_ci_profile_is_deterministic() -> None:
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.database is None and ci.deadline is None
    assert not settings.get_profile("dev").derandomize


def test_loaded_profile_reaches_the_tests_own_settings() -> None:
    in_ci = profile_for(os.environ) == "ci"
    assert settings.default.derandomize == in_ci
    assert PROBE.derandomize == in_ci and PROBE.max_examples == 7


def _draws() -> list[int]:
    """The integers one run of a property test under the ci profile is given."""
    drawn: list[int] = []

    @settings(settings.get_profile("ci"), max_examples=20)
    @given(st.integers())
    def record(x: int) -> None:
        drawn.append(x)

    record()
    return drawn


def test_ci_profile_draws_the_same_examples_every_run() -> None:
    first = _draws()
    assert len(first) > 1 and _draws() == first
