"""QuantizedArray(n, x) computes its qvalues and the quantizer's unique values on first read
(issue 15: construction cost ~5x a memory copy, four passes), with the results of the eager
construction: the work waits on the array's own copy of the values, which is only handed out
(``.values``) after both are computed, and the qvalues use the parameters of construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fhequant.errors import NonFiniteError
from fhequant.kernels import quant as _kernels
from fhequant.kernels.quant import quantize, rounded_unique
from fhequant.quantization import QuantizedArray

X = np.random.default_rng(15).normal(size=(64, 9))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    for name in ("quantize", "min_max", "copy_min_max", "rounded_unique"):
        real = getattr(_kernels, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            seen.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(_kernels, name, spy)
    return seen


def _eager(n_bits: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    qa = QuantizedArray(n_bits, x)
    q = qa.quantizer
    return quantize(x, q.scale, q.zero_point, *q.clip_bounds()), rounded_unique(x)


def test_construction_only_finds_the_range(calls: list[str]) -> None:
    qa = QuantizedArray(8, X)
    assert calls == ["copy_min_max"]  # the copy and the range in one read
    q = qa.qvalues
    assert calls == ["copy_min_max", "quantize"]
    u = qa.quantizer.uvalues
    assert calls == ["copy_min_max", "quantize", "rounded_unique"]
    want_q, want_u = _eager(8, X)
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(u, want_u)


def test_values_handed_out_after_the_work_is_done() -> None:
    qa = QuantizedArray(6, X)
    values = qa.values
    values[:] = 0.0  # the caller owns what it was handed
    want_q, want_u = _eager(6, X)
    np.testing.assert_array_equal(qa.qvalues, want_q)
    np.testing.assert_array_equal(qa.quantizer.uvalues, want_u)
    stats = QuantizedArray(6, X).quantizer.quant_stats  # a copy shares the pending result
    np.testing.assert_array_equal(stats.uvalues, want_u)


def test_qvalues_use_the_parameters_of_construction() -> None:
    qa = QuantizedArray(4, X)
    want_q, _ = _eager(4, X)
    qa.quantizer.scale = qa.quantizer.scale * 3  # changed before the first read
    np.testing.assert_array_equal(qa.qvalues, want_q)


def test_the_callers_array_is_not_referenced() -> None:
    x = X.copy()
    qa = QuantizedArray(5, x)
    x[:] = 7.0
    want_q, want_u = _eager(5, X)
    np.testing.assert_array_equal(qa.qvalues, want_q)
    np.testing.assert_array_equal(qa.quantizer.uvalues, want_u)
    np.testing.assert_array_equal(qa.values, X)


@pytest.mark.parametrize("layout", ["C", "F", "strided", "float32"])
def test_fused_copy_keeps_the_deep_copy_and_range(layout: str) -> None:
    """The copy + min/max kernel gives what deepcopy and min_max gave, in every layout."""
    x = {
        "C": X,
        "F": np.asfortranarray(X),
        "strided": X[::2, 1::3],
        "float32": X.astype(np.float32),
    }[layout]
    qa = QuantizedArray(7, x)
    values = qa.values
    assert values is not x and not np.shares_memory(values, x)
    assert values.dtype == x.dtype and values.strides == x.copy(order="K").strides
    np.testing.assert_array_equal(values, x)
    assert qa.quantizer.quant_stats.rmin == x.min() and qa.quantizer.quant_stats.rmax == x.max()
    assert type(qa.quantizer.quant_stats.rmin) is x.dtype.type
    bad = x.copy(order="K")
    bad[1, 2] = np.nan
    with pytest.raises(NonFiniteError, match=r"^QuantizedArray values: .*flat index "):
        QuantizedArray(7, bad)
