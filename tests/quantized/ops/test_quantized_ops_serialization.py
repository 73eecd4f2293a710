"""JSON round trip of every quantized op class, and registry coverage of the test cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fhequant.errors import SerializationError
from fhequant.quantization import QuantizedArray
from fhequant.quantized import ONNX_OPS_TO_QUANTIZED_IMPL, QuantizedGemm, QuantizedRelu
from fhequant.serialization import dumps, loads
from quantized_op_cases import CASES, REFERENCE_OP_TYPES, OpCase


def test_registry_has_the_reference_ops_and_cases_cover_them() -> None:
    assert len(REFERENCE_OP_TYPES) == 58
    missing = REFERENCE_OP_TYPES - set(ONNX_OPS_TO_QUANTIZED_IMPL)
    assert not missing, f"reference ops without a quantized class: {sorted(missing)}"
    assert {c.op_type for c in CASES} == set(ONNX_OPS_TO_QUANTIZED_IMPL)
    names = {cls.__name__ for cls in ONNX_OPS_TO_QUANTIZED_IMPL.values()}
    assert {"QuantizedAvgPool", "QuantizedBrevitasQuant", "ONNXConstantOfShape"} <= names
    assert {"ONNXGather", "ONNXShape", "ONNXSlice", "QuantizedMatMul"} <= names


@pytest.mark.parametrize("case", CASES, ids=[c.case_id for c in CASES])
def test_op_json_round_trip(case: OpCase) -> None:
    op, q_inputs = case.build()
    text = dumps(op)
    doc = json.loads(text)
    assert doc["type_name"] == type(op).__name__
    fields = doc["serialized_value"]
    assert list(fields) == sorted(fields)
    assert fields["_impl_for_op_named"] == case.op_type
    assert all(isinstance(k, str) for k in fields["constant_inputs"])
    loaded = loads(text)
    assert type(loaded) is type(op)
    assert dumps(loaded) == text
    assert loaded.constant_inputs.keys() == op.constant_inputs.keys()
    before, after = op.q_impl(*q_inputs), loaded.q_impl(*q_inputs)
    if isinstance(before, QuantizedArray):
        np.testing.assert_array_equal(before.qvalues, after.qvalues)
    else:
        np.testing.assert_array_equal(before, after)


def test_load_refuses_json_of_another_op_type() -> None:
    op = QuantizedRelu(5, "relu")
    op.calibrate(np.linspace(-1, 1, 8, dtype=np.float32))
    fields = json.loads(dumps(op))["serialized_value"]
    with pytest.raises(SerializationError, match="Relu"):
        QuantizedGemm.load_dict(fields)
