"""Where the tests find the repository's files, whatever folder a test file is in."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATA", "ROOT", "TESTS"]

#: The ``tests`` folder.
TESTS = Path(__file__).resolve().parent.parent
#: The repository root.
ROOT = TESTS.parent
#: The golden data written by the reference (``tests/data``).
DATA = TESTS / "data"
