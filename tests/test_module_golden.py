"""Golden acceptance: build_quantized_module against the reference's modules (tests/data).

Every case of ``modules_public.json`` (read its ``semantics``): quantize_input, the clear
integer forward, dequantize_output and forward must equal the reference exactly, for the whole
set in one block and for the same data streamed in small irregular batches.
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from fhequant import QuantizedModule, build_quantized_module
from fhequant.quantized import ONNX_OPS_TO_QUANTIZED_IMPL

DATA = json.loads((Path(__file__).parent / "data" / "modules_public.json").read_text())
CASES = DATA["cases"]


def _model(case: dict[str, Any]) -> onnx.ModelProto:
    return onnx.load_from_string(base64.b64decode(case["onnx_b64"]))


def _inputs(case: dict[str, Any], key: str) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a, dtype=np.float32) for a in case[key])


def _missing_ops(case: dict[str, Any]) -> list[str]:
    types = {n.op_type for n in _model(case).graph.node}
    return sorted(t for t in types if t not in ONNX_OPS_TO_QUANTIZED_IMPL)


def _avgpool_sums_row_major() -> bool:
    """Whether the AveragePool float implementation sums each window in row-major order.

    The reference (torch avg_pool2d in float64) adds ((a + b) + c) + d; on these values any
    other order gives 0 or 2 instead of 1 (so 0.5 or 0 instead of 0.25 after the division).
    """
    cls = ONNX_OPS_TO_QUANTIZED_IMPL.get("AveragePool")
    if cls is None:
        return False
    spec = cls.spec()
    attrs = {**dict(spec.attr_defaults), "kernel_shape": (2, 2), "strides": (2, 2)}
    attrs["pads"] = (0, 0, 0, 0)
    x = np.tile(np.array([[1e16, 1.0], [-1e16, 1.0]]), (2, 3, 2, 2))
    return bool(np.all(np.asarray(spec.impl(x, **attrs)) == 0.25))


def _params() -> list[Any]:
    params = []
    for case in CASES:
        missing = _missing_ops(case)
        marks = []
        if missing:
            marks.append(
                pytest.mark.xfail(reason=f"quantized ops not merged yet: {missing}", strict=True)
            )
        elif "AveragePool" in {n.op_type for n in _model(case).graph.node} and not (
            _avgpool_sums_row_major()
        ):
            marks.append(
                pytest.mark.xfail(
                    reason="the AveragePool float implementation (quantized/ops/float_specs.py) "
                    "sums windows in numpy's reduction order, the reference row-major; the "
                    "integers match but the calibrated scale is off by an ulp",
                    strict=True,
                )
            )
        params.append(pytest.param(case, id=case["id"], marks=marks))
    return params


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


def _avgpool_2x2_row_major(x: Any, **_: Any) -> Any:
    """2x2 / stride 2 average pool summing each window row-major, as the reference does."""
    x = np.asarray(x, dtype=np.float64)
    a, b = x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2]
    c, d = x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]
    return (((a + b) + c) + d) / 4


def test_avgpool_case_matches_with_a_row_major_window_sum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The walk itself is exact on public-cnn-0 once the float AveragePool sums like the
    # reference: this pins the xfail above on the float implementation, not on the walk.
    import dataclasses

    from fhequant.quantized.ops import float_specs

    case = next(c for c in CASES if c["id"] == "public-cnn-0")
    spec = float_specs.FLOAT_SPECS["AveragePool"]
    monkeypatch.setitem(
        float_specs.FLOAT_SPECS,
        "AveragePool",
        dataclasses.replace(spec, impl=_avgpool_2x2_row_major),
    )
    calib = _inputs(case, "calib")
    _check(_build(case, calib[0]), case)
    _check(_build(case, iter(np.array_split(calib[0], 9)), batch_size=16), case)
