"""The op registry (classes register when defined) and the capabilities declared on op classes.

Capabilities are class attributes of the ops (see ``fhequant.quantized.ops.base``); the
calibration walk reads them off the op's class. These tests check the registry's coverage and
uniqueness, that a class defined outside the family modules registers itself (isolated from
other tests), that capabilities are declared only where the op can honour them, and that every
op case calibrates to the same module whatever the batch size (which fails for an op whose
float implementation depends on the batch split and declares no ``split_independent_impl``).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import fhequant.quantized as quantized_package
from fhequant import build_quantized_module
from fhequant.errors import OpRegistrationError, QuantizedOpError
from fhequant.quantization import QuantizedArray
from fhequant.quantized import (
    ONNX_OPS_TO_QUANTIZED_IMPL,
    QuantizedMixingOp,
    QuantizedModule,
    QuantizedOp,
    QuantizedRelu,
    quantize_module,
)
from fhequant.quantized.calibration.tables import TablePaths
from fhequant.quantized.ops.registry import isolated_op_registry, quantized_op_class
from fhequant.serialization import registered_classes
from onnx_testing import run_ort
from ptq_helpers import mlp
from quantized_op_cases import CASES, REFERENCE_OP_TYPES, OpCase


def _package_op_classes() -> list[type[QuantizedOp]]:
    """Every QuantizedOp subclass of the package whose body declares an op type."""
    found: list[type[QuantizedOp]] = []
    stack: list[type[QuantizedOp]] = [QuantizedOp]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if "_impl_for_op_named" in vars(sub) and sub.__module__.startswith("fhequant."):
                found.append(sub)
    return found


# --- coverage and uniqueness --------------------------------------------------------------


def test_registry_covers_the_reference_ops_and_every_declared_class() -> None:
    assert set(ONNX_OPS_TO_QUANTIZED_IMPL) >= REFERENCE_OP_TYPES
    declared = {cls._impl_for_op_named: cls for cls in _package_op_classes()}
    assert declared == ONNX_OPS_TO_QUANTIZED_IMPL
    assert list(ONNX_OPS_TO_QUANTIZED_IMPL) == sorted(ONNX_OPS_TO_QUANTIZED_IMPL)


def test_every_registered_op_type_maps_to_exactly_one_class() -> None:
    claims = Counter(cls._impl_for_op_named for cls in _package_op_classes())
    assert [t for t, n in claims.items() if n != 1] == []
    classes = list(ONNX_OPS_TO_QUANTIZED_IMPL.values())
    assert len(set(classes)) == len(classes)
    for op_type, cls in ONNX_OPS_TO_QUANTIZED_IMPL.items():
        assert cls._impl_for_op_named == op_type
        assert quantized_op_class(op_type) is cls


def test_registered_classes_are_exported_and_have_a_test_case() -> None:
    for cls in ONNX_OPS_TO_QUANTIZED_IMPL.values():
        assert getattr(quantized_package, cls.__name__, None) is cls, cls.__name__
    assert {c.op_type for c in CASES} == set(ONNX_OPS_TO_QUANTIZED_IMPL)


def test_intermediate_bases_are_not_registered() -> None:
    registered = set(ONNX_OPS_TO_QUANTIZED_IMPL.values())
    assert QuantizedOp not in registered
    assert QuantizedMixingOp not in registered
    bases = {base for cls in registered for base in cls.__mro__[1:]}
    intermediate = {b for b in bases if isinstance(b, type) and issubclass(b, QuantizedOp)}
    assert {b.__name__ for b in intermediate - registered} >= {"_ShapeOp", "_BinaryMixing"}


# --- registration at class definition ----------------------------------------------------


def test_an_op_class_defined_in_a_test_registers_itself_and_works_end_to_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole of a simple new op: one class (here ThresholdedRelu, which has a float
    implementation but no quantized op), then it is calibrated by table, serialized, run."""
    assert "ThresholdedRelu" not in ONNX_OPS_TO_QUANTIZED_IMPL
    json_before = registered_classes()
    by_table = TablePaths.calibrate_by_table
    taken: list[bool] = []

    def counting(self: Any, op: Any, variable: list[str], out: str) -> bool:
        done = by_table(self, op, variable, out)
        taken.append(done)
        return done

    monkeypatch.setattr(TablePaths, "calibrate_by_table", counting)
    x = np.random.default_rng(5).normal(size=(300, 10)).astype(np.float32) * 2
    model = mlp([10, 16, 4], act="ThresholdedRelu", seed=4)
    with isolated_op_registry() as registry:

        class QuantizedThresholdedRelu(QuantizedOp):
            """x if x > alpha else 0."""

            _impl_for_op_named = "ThresholdedRelu"
            calibrate_by_table = True

        assert registry["ThresholdedRelu"] is QuantizedThresholdedRelu
        assert quantized_op_class("ThresholdedRelu") is QuantizedThresholdedRelu
        module = build_quantized_module(model, x, n_bits=7, batch_size=64)
        # its input is the first Gemm's quantized output: calibrated through its table
        assert taken.count(True) == 1
        ops = [op for _, op in module.quant_layers_dict.values()]
        assert [type(op).__name__ for op in ops].count("QuantizedThresholdedRelu") == 1
        text = module.dumps()
        assert '"type_name": "QuantizedThresholdedRelu"' in text
        loaded = QuantizedModule.loads(text)
        assert loaded.dumps() == text
        out = loaded.forward(x[:50])
        np.testing.assert_array_equal(out, module.forward(x[:50]))
        (ref,) = run_ort(model, {"x": x[:50]})
        assert np.abs(out - ref).mean() < 0.05 * np.abs(ref).max()
    assert "ThresholdedRelu" not in ONNX_OPS_TO_QUANTIZED_IMPL
    assert registered_classes() == json_before


def test_a_second_class_for_a_registered_op_type_is_refused_at_definition() -> None:
    json_before = registered_classes()
    with isolated_op_registry(), pytest.raises(OpRegistrationError, match="QuantizedRelu"):

        class AnotherRelu(QuantizedOp):
            _impl_for_op_named = "Relu"

    assert ONNX_OPS_TO_QUANTIZED_IMPL["Relu"] is QuantizedRelu
    assert registered_classes() == json_before
    # refused before the JSON registration, inside the scope too
    with isolated_op_registry():
        with pytest.raises(OpRegistrationError):

            class AnotherRelu2(QuantizedOp):
                _impl_for_op_named = "Relu"

        assert "AnotherRelu2" not in registered_classes()


@pytest.mark.parametrize("op_type", ["NoSuchOp", ""])
def test_an_op_type_without_float_implementation_is_refused(op_type: str) -> None:
    with isolated_op_registry(), pytest.raises(OpRegistrationError):

        class Unknown(QuantizedOp):
            _impl_for_op_named = op_type

    assert isinstance(OpRegistrationError("x"), QuantizedOpError)


def test_a_subclass_that_declares_no_op_type_is_not_registered() -> None:
    before = dict(ONNX_OPS_TO_QUANTIZED_IMPL)
    with isolated_op_registry() as registry:

        class LoudRelu(QuantizedRelu):
            """Reuses QuantizedRelu's op type and code: an intermediate class."""

        assert dict(registry) == before
        assert quantized_op_class("Relu") is QuantizedRelu
        assert LoudRelu._impl_for_op_named == "Relu"


def test_isolation_restores_the_registries_after_an_error() -> None:
    before, json_before = dict(ONNX_OPS_TO_QUANTIZED_IMPL), registered_classes()
    with pytest.raises(RuntimeError), isolated_op_registry():

        class QuantizedOneHot(QuantizedOp):
            _impl_for_op_named = "OneHot"

        raise RuntimeError("inside the scope")
    assert before == ONNX_OPS_TO_QUANTIZED_IMPL
    assert registered_classes() == json_before


# --- capabilities ---------------------------------------------------------------------------

#: What the name lists replaced by the capability attributes said (checked once: from now on
#: the attributes are the truth, and these sets only document the move).
_OLD_LISTS: dict[str, frozenset[str]] = {
    "calibrate_by_table": frozenset(
        {
            *("Abs", "Celu", "Clip", "Elu", "Erf", "Exp", "Floor", "HardSigmoid", "HardSwish"),
            *("LeakyRelu", "Log", "Neg", "Relu", "Round", "Selu", "Sigmoid", "Sign"),
            *("Softplus", "Tanh"),
        }
    ),
    "split_independent_impl": frozenset({"Gemm", "MatMul", "Conv"}),
    "fused_extremes": frozenset({"Gemm", "MatMul", "Conv"}),
    "pow2_accumulator_shift": frozenset({"Gemm", "MatMul", "Conv"}),
    "requant_table_if_constant": frozenset(
        {"Gemm", "MatMul", "Conv"}
        | {
            *("Reshape", "Flatten", "Transpose", "Concat", "Slice", "Gather", "Squeeze"),
            *("Unsqueeze", "Expand"),
        }
    ),
    "clips_percentiles": frozenset({"BatchNormalization"}),
}
#: Op types added since the lists were replaced, with the capabilities they declare.
_ADDED_SINCE: dict[str, frozenset[str]] = {
    "calibrate_by_table": frozenset(
        {"Softsign", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Cos", "Cosh"}
        | {"Gelu", "Mish", "Reciprocal", "Sin", "Sinh", "Sqrt", "Tan"}
    ),
    # a shape op like Gather (issue 13: torch's default export of AdaptiveAvgPool2d)
    "requant_table_if_constant": frozenset({"GatherND"}),
}
#: Op types that no longer declare a capability: Concat (issue 13) reads its producers' own
#: integers when it brings differently quantized inputs onto its output quantizer.
_REMOVED_SINCE: dict[str, frozenset[str]] = {"requant_table_if_constant": frozenset({"Concat"})}


def _declaring(capability: str) -> set[str]:
    default = getattr(QuantizedOp, capability)
    return {
        op_type
        for op_type, cls in ONNX_OPS_TO_QUANTIZED_IMPL.items()
        if getattr(cls, capability) != default
    }


@pytest.mark.parametrize("capability", sorted(_OLD_LISTS))
def test_capabilities_agree_with_the_lists_they_replaced(capability: str) -> None:
    expected = _OLD_LISTS[capability] | _ADDED_SINCE.get(capability, frozenset())
    expected -= _REMOVED_SINCE.get(capability, frozenset())
    assert _declaring(capability) == expected


def test_only_relu_claims_a_monotone_table() -> None:
    # a new claim needs its float implementation to be exactly non-decreasing
    # (tests/calibration/test_monotone_tables.py checks Relu's)
    assert _declaring("monotone_table") == {"Relu"}


def test_capability_values_match_what_the_old_code_did() -> None:
    impls = ONNX_OPS_TO_QUANTIZED_IMPL
    assert {t: impls[t].fused_extremes for t in ("Gemm", "MatMul", "Conv")} == {
        "Gemm": "gemm",
        "MatMul": "matmul",
        "Conv": "conv",
    }
    assert impls["Gemm"].requant_table_if_constant == (1,)
    assert impls["MatMul"].requant_table_if_constant == (1,)
    assert impls["Conv"].requant_table_if_constant == (1,)
    assert impls["Reshape"].requant_table_if_constant == ()


def _owner(cls: type, capability: str) -> type:
    """The class whose body set the capability ``cls`` has."""
    return next(c for c in cls.__mro__ if capability in vars(c))


@pytest.mark.parametrize("op_type", sorted(ONNX_OPS_TO_QUANTIZED_IMPL))
def test_capabilities_are_declared_only_where_the_op_can_use_them(op_type: str) -> None:
    cls = ONNX_OPS_TO_QUANTIZED_IMPL[op_type]
    spec = cls.spec()
    cases = [c for c in CASES if c.op_type == op_type]
    if cls.calibrate_by_table:
        # the table path stands for the default calibration and float TLU of one tensor
        assert cls.q_impl is QuantizedOp.q_impl
        assert cls.calibrate is QuantizedOp.calibrate
        assert cls._calibration_values is QuantizedOp._calibration_values
        assert not cls.clips_percentiles and not spec.raw_output and not cls.is_mixing
        _assert_element_wise(cases[0])
    if cls.monotone_table:
        # the table path evaluates it on the whole integer range (no presence marks)
        assert cls.calibrate_by_table
    if cls.clips_percentiles:
        assert cls._calibration_values is not QuantizedOp._calibration_values
        assert cls.calibrate is QuantizedOp.calibrate
    if cls.fused_extremes is not None:
        # the kernels compute the sums of the split-independent implementation
        assert cls.split_independent_impl is not None
        assert cls.fused_extremes in ("gemm", "matmul", "conv")
    if cls.split_independent_impl is not None:
        for case in cases:
            _assert_split_independent(cls, case)
    if cls.pow2_accumulator_shift:
        # the pass rewrites the "matmul" accumulator of a mixing op with constant weights
        assert issubclass(cls, QuantizedMixingOp)
        rounded = [c for c in cases if c.rounding is not None]
        assert rounded
        for case in rounded:
            op, _ = case.build()
            assert "matmul" in op.lsbs_to_remove
    if cls.requant_table_if_constant is not None:
        # declared with the q_impl it vouches for: a subclass overriding q_impl re-declares it
        assert cls.q_impl is _owner(cls, "requant_table_if_constant").q_impl
        assert not cls.calibrate_by_table and not spec.raw_output
        assert all(i < len(spec.input_names) for i in cls.requant_table_if_constant)
        # only an op that re-quantizes its inputs (never fused) can read them from a table
        assert not any(case.build()[0].can_fuse() for case in cases)


def _assert_element_wise(case: OpCase) -> None:
    """Each output element of the float implementation depends on its input element only."""
    op, _ = case.build()
    x = np.asarray(case.inputs[0], dtype=np.float32)
    whole = np.asarray(op.calibrate(x))
    assert whole.shape == x.shape
    one_by_one = np.array([op.calibrate(v.reshape(1)).reshape(()) for v in x.reshape(-1)])
    np.testing.assert_allclose(whole.reshape(-1), one_by_one, rtol=1e-6, atol=1e-7)


def _assert_split_independent(cls: type[QuantizedOp], case: OpCase) -> None:
    """The split-independent implementation gives each row the same bits alone and with the
    other rows, and the numbers of the op's float implementation up to summation order."""
    op, _ = case.build()
    impl = cls.split_independent_impl
    assert impl is not None
    prepared = op._prepare_inputs_with_constants(
        *case.inputs, calibrate=True, quantize_actual_values=False
    )
    whole = np.asarray(impl(*prepared, **op.attrs))
    np.testing.assert_allclose(whole, op.call_impl(*prepared, **op.attrs), rtol=1e-5, atol=1e-5)
    if len(case.inputs) != 1:
        return  # the rows of a single variable input
    slot = next(i for i in range(len(prepared)) if i not in op.constant_inputs)
    for row in range(len(prepared[slot])):
        alone = list(prepared)
        alone[slot] = prepared[slot][row : row + 1]
        np.testing.assert_array_equal(impl(*alone, **op.attrs)[0], whole[row])


# --- batch-size invariance of streamed calibration, per op case ----------------------------

_ROWS = 41
_BATCH_SIZES = (_ROWS, 1, 6, 16)
#: Cases a one-node model cannot stream: a raw graph input, or a second operand whose first
#: axis is not a batch axis (the calibration data is split along axis 0 of every input).
_NOT_STREAMABLE = {
    "ConstantOfShape": "raw graph input",
    "MatMul_enc": "b has no batch axis",
    # (torch's export transposes the batch away from the indexed axes first; vgg11 streams)
    "GatherND": "its index tuples address axis 0, the batch axis of a one-node model",
}


#: Constants of a case that fix the batch size, replaced by ones that broadcast over it.
_BATCH_FREE_CONSTANTS: dict[str, dict[int, Any]] = {
    "Where": {0: np.array([[[1.0, 0.0, 1.0, 1.0, 0.0]]], dtype=np.float32)},
    "Expand": {1: np.array([1, 3, 6, 6])},
}


def _constant_value(value: Any) -> np.ndarray:
    return np.asarray(value.values if isinstance(value, QuantizedArray) else value)


def _case_model(case: OpCase) -> onnx.ModelProto:
    """A one-node model of the case: its constants as initializers, its variable inputs as
    graph inputs with a free batch axis."""
    constants = {**case.constants, **_BATCH_FREE_CONSTANTS.get(case.case_id, {})}
    total = len(case.inputs) + len(constants)
    variable = iter(range(len(case.inputs)))
    names, graph_inputs, inits = [], [], []
    for slot in range(total):
        if slot in constants:
            names.append(f"c{slot}")
            inits.append(numpy_helper.from_array(_constant_value(constants[slot]), f"c{slot}"))
            continue
        i = next(variable)
        x = np.asarray(case.inputs[i])
        names.append(f"x{i}")
        dtype = helper.np_dtype_to_tensor_dtype(x.dtype)
        graph_inputs.append(helper.make_tensor_value_info(f"x{i}", dtype, [None, *x.shape[1:]]))
    domain, _, op = case.op_type.rpartition(".")
    node = helper.make_node(
        op, names, ["y"], name=f"{case.case_id}_node", domain=domain, **case.attrs
    )
    op_, _ = case.build()
    out = np.asarray(op_.calibrate(*case.inputs))
    shape: list[Any] = list(out.shape)
    if not op_.spec().raw_output:
        shape[0] = None  # the batch axis
    output = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(out.dtype), shape)
    graph = helper.make_graph([node], "g", graph_inputs, [output], inits)
    opsets = [helper.make_opsetid("", 14)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, opset_imports=opsets)


def _case_data(case: OpCase) -> tuple[np.ndarray, ...]:
    """_ROWS rows per input: the case's rows repeated, each scaled by a positive factor (so
    signs, and with them the ops' valid domains, are kept)."""
    rng = np.random.default_rng(len(case.case_id))
    factors = rng.uniform(0.5, 1.5, size=_ROWS)
    data = []
    for x in case.inputs:
        x = np.asarray(x)
        rows = np.concatenate([x] * (_ROWS // len(x) + 1))[:_ROWS]
        scaled = rows * factors.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
        data.append(np.round(scaled) if case.op_type in _ROUNDED else scaled)
    return tuple(data)


_ROUNDED = {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"}


def _module_json(
    model: onnx.ModelProto, data: tuple[np.ndarray, ...], rows: int, rounding: Any
) -> str:
    """The JSON of the module the calibration walk makes of ``model`` in blocks of ``rows``
    rows (the walk of ``build_quantized_module``, called directly: onnx.checker would refuse
    the non-standard Unfold node)."""
    result = quantize_module(
        model, data, n_bits=5, rounding_threshold_bits=rounding, block_rows=rows
    )
    module = QuantizedModule(
        result["input_names"], result["output_names"], result["quant_layers_dict"]
    )
    module.set_inputs_quantization_parameters(*result["input_quantizers"])
    return module.dumps()


# The cases with a batch axis to stream over (the others are listed, with the reason, in
# _NOT_STREAMABLE).
_STREAMABLE = [c for c in CASES if c.case_id not in _NOT_STREAMABLE]


@pytest.mark.parametrize("case", _STREAMABLE, ids=[c.case_id for c in _STREAMABLE])
def test_streamed_calibration_of_each_op_is_batch_size_invariant(case: OpCase) -> None:
    model = _case_model(case)
    data = _case_data(case)
    with np.errstate(all="ignore"):
        texts = {b: _module_json(model, data, b, case.rounding) for b in _BATCH_SIZES}
    whole = texts[_ROWS]
    assert json.loads(whole)["content"]["type_name"] == "QuantizedModule"
    for b, text in texts.items():
        assert text == whole, f"batch_size={b} calibrates {case.case_id} differently"
