"""Two quantizer-domain holes the quantizer fuzz (test_hardening_quantizers.py) found."""

from __future__ import annotations

import numpy as np
import pytest

from fhequant import errors
from fhequant.quantization import QuantizedArray


def test_a_scale_below_float32s_range_is_refused_for_float32_data() -> None:
    x = np.array([0.0], dtype=np.float32)  # divided in float32: the scale would become 0
    with pytest.raises(errors.QuantizationError, match="float32"):
        QuantizedArray(4, x, scale=2.9e-118, zero_point=0, offset=0)
    q = QuantizedArray(4, x.astype(np.float64), scale=2.9e-118, zero_point=0, offset=0)
    assert q.qvalues.tolist() == [0]


def test_a_range_whose_dequantized_values_overflow_is_refused() -> None:
    x = np.array([0.0, np.finfo(np.float64).max])
    with pytest.raises(errors.QuantizationError, match="overflows float64"):
        QuantizedArray(4, x, is_signed=True, is_symmetric=True)
    q = QuantizedArray(4, x / 4, is_signed=True, is_symmetric=True)
    assert np.all(np.isfinite(q.quantizer.dequant(q.qvalues)))
