"""Golden acceptance: build_quantized_module against the reference's modules (tests/data).

Every case of ``modules_public.json`` (read its ``semantics``): quantize_input, the clear
integer forward, dequantize_output and forward must equal the reference exactly, for the whole
set in one block and for the same data streamed in small irregular batches.
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import numpy as np
import onnx
import pytest

from fhequant import QuantizedModule, build_quantized_module
from repo_paths import DATA as GOLDEN_DATA

DATA = json.loads((GOLDEN_DATA / "modules_public.json").read_text())
CASES = DATA["cases"]


def _model(case: dict[str, Any]) -> onnx.ModelProto:
    return onnx.load_from_string(base64.b64decode(case["onnx_b64"]))


def _inputs(case: dict[str, Any], key: str) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a, dtype=np.float32) for a in case[key])


def _params() -> list[Any]:
    return [pytest.param(case, id=case["id"]) for case in CASES]


def _check(module: QuantizedModule, case: dict[str, Any]) -> None:
    expected = case["expected"]
    test = _inputs(case, "test")
    q_in = module.quantize_input(*test)
    q_in = q_in if isinstance(q_in, tuple) else (q_in,)
    for got, want in zip(q_in, expected["quantized_inputs"], strict=True):
        np.testing.assert_array_equal(got, np.asarray(want))
    q_out = module.quantized_forward(*q_in, fhe="disable")
    np.testing.assert_array_equal(q_out, np.asarray(expected["quantized_outputs"]))
    dq = module.dequantize_output(q_out)
    want_dq = np.asarray(expected["dequantized_outputs"], dtype=np.float64)
    assert dq.dtype == np.float64
    np.testing.assert_array_equal(dq, want_dq)
    np.testing.assert_array_equal(module.forward(*test), np.asarray(expected["forward"]))


def _build(case: dict[str, Any], data: Any, **kwargs: Any) -> QuantizedModule:
    return build_quantized_module(
        _model(case),
        data,
        n_bits=case["n_bits"],
        rounding_threshold_bits=case["rounding_threshold_bits"],
        **kwargs,
    )


@pytest.mark.parametrize("case", _params())
def test_whole_set_matches_reference(case: dict[str, Any]) -> None:
    calib = _inputs(case, "calib")
    module = _build(case, calib[0] if len(calib) == 1 else calib)
    _check(module, case)


@pytest.mark.parametrize("case", _params())
def test_streamed_small_batches_match_reference(case: dict[str, Any]) -> None:
    calib = _inputs(case, "calib")
    n = calib[0].shape[0]
    cuts = [0, 5, 12, 13, 40, 41, 90, 150, n]

    def batches() -> Any:
        for lo, hi in itertools.pairwise(cuts):
            parts = tuple(a[lo:hi] for a in calib)
            yield parts[0] if len(parts) == 1 else parts

    module = _build(case, batches(), batch_size=16, memory_budget=4096)
    _check(module, case)


def test_golden_file_semantics_are_the_ones_tested() -> None:
    assert "quantized_forward(fhe='disable') == quantized_outputs" in DATA["semantics"]
    assert len(CASES) == 8


@pytest.mark.parametrize("case", _params())
def test_json_round_trip_keeps_the_reference_outputs(case: dict[str, Any]) -> None:
    calib = _inputs(case, "calib")
    module = _build(case, calib[0] if len(calib) == 1 else calib)
    _check(QuantizedModule.loads(module.dumps()), case)
