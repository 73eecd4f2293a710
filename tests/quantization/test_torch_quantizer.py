"""TorchUniformQuantizer against the numpy UniformQuantizer (docs/contract.md §1.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fhequant import QuantizedArray, TorchUniformQuantizer

FINITE = {"allow_nan": False, "allow_infinity": False}


@settings(max_examples=60, deadline=None)
@given(
    calib=hnp.arrays(np.float64, st.integers(2, 30), elements=st.floats(-50, 50, **FINITE)),
    x=hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(-80, 80, **FINITE)),
    n_bits=st.integers(2, 12),
    mode=st.sampled_from([{}, {"is_signed": True}, {"is_signed": True, "is_symmetric": True}]),
    narrow=st.booleans(),
)
def test_torch_quantizer_matches_numpy_in_float64(
    calib: np.ndarray, x: np.ndarray, n_bits: int, mode: dict[str, bool], narrow: bool
) -> None:
    quantizer = QuantizedArray(n_bits, calib, is_narrow=narrow, **mode).quantizer  # type: ignore[arg-type]
    torch_quantizer = TorchUniformQuantizer(quantizer)
    q_np = quantizer.quant(x)
    q_torch = torch_quantizer.quant(torch.from_numpy(x), dtype=torch.int64)
    np.testing.assert_array_equal(q_torch.numpy(), q_np)
    back = torch_quantizer.dequant(q_torch.to(torch.float64))
    np.testing.assert_allclose(back.numpy(), quantizer.dequant(q_np), rtol=1e-12, atol=1e-12)


def test_torch_rounds_half_to_even_and_clips() -> None:
    quantizer = QuantizedArray(3, np.array([0.0, 7.0])).quantizer
    assert quantizer.scale == 1.0 and quantizer.zero_point == 0
    torch_quantizer = TorchUniformQuantizer(quantizer)
    out = torch_quantizer.quant(torch.tensor([0.5, 1.5, 2.5, -4.0, 9.0], dtype=torch.float64))
    assert out.dtype == torch.float64  # no cast without dtype
    assert out.tolist() == [0.0, 2.0, 2.0, 0.0, 7.0]
    quantizer.no_clipping = True
    assert torch_quantizer.quant(torch.tensor([-4.0, 9.0])).tolist() == [-4.0, 9.0]


def test_torch_dequant_casts_zero_point_to_q_dtype() -> None:
    quantizer = QuantizedArray(4, np.array([-1.3, 2.0])).quantizer
    torch_quantizer = TorchUniformQuantizer(quantizer)
    q = torch.tensor([0, 5, 15], dtype=torch.int64)
    out = torch_quantizer.dequant(q)
    assert out.dtype == torch.float32  # int tensor times a Python-float scale: torch default
    expected = quantizer.scale * (q.numpy() - int(quantizer.zero_point))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    assert torch_quantizer.scale is quantizer.scale
    assert torch_quantizer.quantizer is quantizer
    with pytest.raises(AttributeError):
        _ = torch_quantizer.not_an_attribute
