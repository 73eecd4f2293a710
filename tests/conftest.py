"""Shared pytest setup of the test suite.

Tests are grouped by area (``kernels/``, ``quantization/``, ``onnx_import/``, ``quantized/``,
``quantized/ops/``, ``calibration/``, ``fhe/``, ``qat/``, ``api/``); the golden data stays in
``data/``. The shared helpers live in the ``_support`` package and are imported by their bare
module name (``from ptq_helpers import mlp``), whatever folder the test file is in: this file
puts ``_support`` on ``sys.path`` before any test module is collected.
"""

from __future__ import annotations

import sys
from pathlib import Path

_SUPPORT = str(Path(__file__).resolve().parent / "_support")
if _SUPPORT not in sys.path:
    sys.path.insert(0, _SUPPORT)

# Hypothesis: fixed examples in CI, random exploration locally (see hypothesis_profiles).
# Loaded here, before any test module is imported: a test's @settings(...) inherits the
# values it does not set (derandomize, database) from the profile loaded at that moment.
import os  # noqa: E402

from hypothesis_profiles import load_profile  # noqa: E402

HYPOTHESIS_PROFILE = load_profile(os.environ)
