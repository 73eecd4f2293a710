"""Every case of tests/data/quantizers_public.json, produced by the reference (Concrete ML 1.9).

Each case's ``call`` is executed as written, in a namespace where its names are fhequant's
classes. We check exact integers, float64 bit patterns (NaN-aware), Python-vs-numpy scalar
types, dtypes and shapes, the byte-identical ``dumps()`` text, the values kept after
construction and ``dequant()``. Error cases must raise the docs/contract.md §8 type, as a
``fhequant.errors`` class.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pytest

import fhequant
from fhequant import errors, serialization
from repo_paths import DATA as GOLDEN_DATA

GOLDEN = json.loads((GOLDEN_DATA / "quantizers_public.json").read_text())
CASES = {case["id"]: case for case in GOLDEN["cases"]}

# The reference asserted in these situations; docs/contract.md §8 gives the fhequant type.
ASSERTION_ERRORS: dict[str, tuple[type[Exception], type[Exception]]] = {
    "errors/symmetric_without_signed": (ValueError, errors.QuantizationError),
    "errors/qat_and_symmetric": (ValueError, errors.QuantizationError),
    "errors/int_values_with_value_is_float_true": (TypeError, errors.DTypeError),
    "errors/bool_values": (TypeError, errors.DTypeError),
    "errors/float_values_with_value_is_float_false": (TypeError, errors.DTypeError),
    "errors/value_is_float_false_without_params": (TypeError, errors.ArgumentError),
}
# Errors the reference already typed; fhequant keeps the built-in type, as its own class.
TYPED_ERRORS: dict[str, tuple[type[Exception], type[Exception]]] = {
    "errors/empty_array": (ValueError, errors.EmptyTensorError),
    "errors/partial_params": (TypeError, errors.ArgumentError),
    "errors/partial_stats": (TypeError, errors.ArgumentError),
    "errors/no_clipping_kwarg_on_QuantizedArray": (TypeError, errors.ArgumentError),
}


class _NumpyNames:
    """``numpy`` as the calls use it; ``numpy.bool`` (numpy >= 2 spelling) is ``bool_``."""

    bool = np.bool_

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _float(value: Any) -> Any:
    """Decode the golden float encoding ('nan', 'inf', '-inf' strings)."""
    if isinstance(value, str):
        return float(value)
    if isinstance(value, list):
        return [_float(v) for v in value]
    return value


def _nested(flat: Any, shape: list[int]) -> Any:
    """The flat golden list as nested lists of ``shape`` (a bare number for shape [])."""
    if not isinstance(flat, list):
        return flat
    return np.array(flat, dtype=object).reshape(shape).tolist()


def _namespace(case: dict[str, Any]) -> dict[str, Any]:
    inputs = case["inputs"]
    names: dict[str, Any] = {
        name: getattr(fhequant, name)
        for name in (
            "QuantizedArray",
            "QuantizationOptions",
            "MinMaxQuantizationStats",
            "UniformQuantizationParameters",
            "UniformQuantizer",
        )
    }
    names["numpy"] = _NumpyNames()
    names["values"] = _nested(_float(inputs["values"]), inputs["shape"])
    if "calib_values" in inputs:
        names["calib"] = np.array(_float(inputs["calib_values"]), dtype=inputs["dtype"])
    if "explicit_params" in case["options"]:
        names["explicit_params"] = case["options"]["explicit_params"]
    if inputs["input_kind"] == "ndarray" and case["api"] == "UniformQuantizer":
        names["values"] = np.array(names["values"], dtype=inputs["dtype"])
    return names


def _type_name(value: Any) -> str | None:
    if value is None:
        return None
    cls = type(value)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


def _same_float(actual: Any, expected: Any) -> bool:
    actual, expected = float(actual), float(expected)
    if math.isnan(expected):
        return math.isnan(actual)
    return _bits(actual) == _bits(expected)


def _assert_floats(actual: Any, expected: list[Any] | float, what: str) -> None:
    flat = np.asarray(actual, dtype=np.float64).ravel().tolist()
    wanted = _float(expected if isinstance(expected, list) else [expected])
    assert len(flat) == len(wanted), what
    bad = [i for i, (a, e) in enumerate(zip(flat, wanted, strict=True)) if not _same_float(a, e)]
    assert not bad, f"{what}: first mismatch at {bad[0]}: {flat[bad[0]]!r} != {wanted[bad[0]]!r}"


def _assert_scalar(actual: Any, expected: Any, expected_type: str | None, what: str) -> None:
    assert _type_name(actual) == expected_type, f"{what} type"
    if expected is None:
        assert actual is None, what
    elif isinstance(expected, int) and not isinstance(expected, bool):
        assert isinstance(actual, (int, np.integer)), what
        assert int(actual) == expected, what
    else:
        assert _same_float(actual, _float(expected)), f"{what}: {actual!r} != {expected!r}"


def _run(case: dict[str, Any]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """Execute the call; return (quantizer, qvalues, values after construction, dumps, ns)."""
    names = _namespace(case)
    if case["api"] == "QuantizedArray":
        exec("result = " + case["call"], names)
        array = names["result"]
        assert isinstance(array, fhequant.QuantizedArray)
        values = np.array(array.values, copy=True)  # before dequant() overwrites them
        return array.quantizer, array.qvalues, values, array.dumps(), names
    exec(case["call"], names)
    quantizer = names["uq"]
    return quantizer, names["qv"], None, quantizer.dumps(), names


OK_IDS = [cid for cid, case in CASES.items() if "error" not in case["expected"]]
ERROR_IDS = [cid for cid, case in CASES.items() if "error" in case["expected"]]


def test_golden_file_is_complete() -> None:
    assert len(CASES) == GOLDEN["n_cases"] == 155
    assert len(ERROR_IDS) == GOLDEN["n_error_cases"] == 11
    known = set(ASSERTION_ERRORS) | set(TYPED_ERRORS)
    assert {CASES[cid]["category"] for cid in ERROR_IDS} <= known


@pytest.mark.parametrize("case_id", OK_IDS)
def test_golden_case(case_id: str) -> None:
    case = CASES[case_id]
    exp = case["expected"]
    quantizer, qvalues, values, dumps, names = _run(case)

    qarray = np.asarray(qvalues)
    assert qarray.dtype.name == exp["qvalues_dtype"]
    assert list(qarray.shape) == exp["qvalues_shape"]
    if exp["qvalues_shape"] == []:
        assert isinstance(qvalues, np.generic), "a scalar input gives a numpy scalar qvalues"
    wanted_q = exp["qvalues"] if isinstance(exp["qvalues"], list) else [exp["qvalues"]]
    assert qarray.ravel().tolist() == wanted_q

    for field in ("scale", "zero_point", "offset", "rmin", "rmax"):
        _assert_scalar(getattr(quantizer, field), exp[field], exp[f"{field}_type"], field)

    assert dumps == exp["dumps"]

    if case["api"] == "QuantizedArray":
        if "values_after_construction" in exp:
            _assert_floats(values, exp["values_after_construction"], "values")
        array = names["result"]
        dequant = array.dequant()
        assert array.values is dequant, "dequant() overwrites values"
    else:
        dequant = names["deq"]
    assert np.asarray(dequant).dtype.name == exp["dequant_dtype"]
    _assert_floats(dequant, exp["dequant"], "dequant")


@pytest.mark.parametrize("case_id", OK_IDS)
def test_golden_dumps_round_trip(case_id: str) -> None:
    text = CASES[case_id]["expected"]["dumps"]
    loaded = serialization.loads(text)
    assert type(loaded).__name__ == CASES[case_id]["api"]
    assert loaded.dumps() == text


@pytest.mark.parametrize("case_id", ERROR_IDS)
def test_golden_error_case(case_id: str) -> None:
    case = CASES[case_id]
    reference_type = case["expected"]["error"]["type"]
    table = ASSERTION_ERRORS if reference_type == "AssertionError" else TYPED_ERRORS
    builtin, fhequant_class = table[case["category"]]
    if reference_type != "AssertionError":
        assert builtin.__name__ == reference_type
    with pytest.raises(builtin) as info:
        _run(case)
    assert isinstance(info.value, fhequant_class)
    assert isinstance(info.value, errors.FhequantError)
