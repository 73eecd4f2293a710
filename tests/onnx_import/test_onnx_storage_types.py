"""Issue 13, ONNX backend cases: Cast to and from the storage types (bfloat16, float8, float4,
float8e8m0, int4, int2), newer opsets whose ops only added types or attributes fhequant
implements, opset-1 files and training-mode BatchNormalization; each
checked against onnxruntime (or, where onnxruntime has no kernel, onnx's reference
evaluator)."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from fhequant.errors import FhequantError
from fhequant.onnx import NumpyModule
from onnx_testing import run_ort

RNG = np.random.default_rng(1313)
_SPECIAL = np.array([0.0, -0.0, 1e6, -1e6, 1e-7, np.nan, np.inf, -np.inf], dtype=np.float32)


def _single(
    op: str,
    x_type: int,
    y_type: int,
    opset: int,
    n_inputs: int = 1,
    outputs: tuple[str, ...] = ("y",),
    shape: list[Any] | None = None,
    **attrs: Any,
) -> onnx.ModelProto:
    shape = ["N"] if shape is None else shape
    names = ["x", "b", "c", "d", "e"][:n_inputs]
    graph = helper.make_graph(
        [helper.make_node(op, names, list(outputs), **attrs)],
        "g",
        [helper.make_tensor_value_info(n, x_type, shape) for n in names],
        [
            helper.make_tensor_value_info(o, y_type, ["M"] if op == "Range" else shape)
            for o in outputs
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = max(helper.find_min_ir_version_for(list(model.opset_import)), 10)
    return model


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.view(f"u{a.dtype.itemsize}")


_TO = {
    TensorProto.BFLOAT16: ml_dtypes.bfloat16,
    TensorProto.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn,
    TensorProto.FLOAT8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz,
    TensorProto.FLOAT8E5M2: ml_dtypes.float8_e5m2,
    TensorProto.FLOAT8E5M2FNUZ: ml_dtypes.float8_e5m2fnuz,
    TensorProto.INT4: ml_dtypes.int4,
    TensorProto.UINT4: ml_dtypes.uint4,
}


_NO_SATURATE = (TensorProto.INT4, TensorProto.UINT4, TensorProto.BFLOAT16)


# saturate applies to float8 only: the other types run once, with the default
@pytest.mark.parametrize(
    ("to", "saturate"),
    [(to, sat) for to in sorted(_TO) for sat in (0, 1) if sat or to not in _NO_SATURATE],
)
def test_cast_to_storage_types_matches_onnxruntime(to: int, saturate: int) -> None:
    x = np.concatenate([RNG.normal(0, 30, size=40).astype(np.float32), _SPECIAL])
    if to in (TensorProto.INT4, TensorProto.UINT4):
        x = np.round(RNG.uniform(-3, 12, size=40)).astype(np.float32)
        x = np.abs(x) if to == TensorProto.UINT4 else np.clip(x, -8, 7)
    attrs = {"saturate": saturate} if to not in (TensorProto.INT4, TensorProto.UINT4) else {}
    model = _single("Cast", TensorProto.FLOAT, to, 21, to=to, **attrs)
    got = NumpyModule(model)(x)
    ref = _reference(model, {"x": x})[0]
    assert got.dtype == ref.dtype == np.dtype(_TO[to])
    np.testing.assert_array_equal(_bits(got), _bits(ref))
    if to == TensorProto.FLOAT8E4M3FN:  # onnxruntime's binding returns its raw bits
        np.testing.assert_array_equal(_bits(got), run_ort(model, {"x": x})[0])
    # and back: storage type -> float32
    back = _single("Cast", to, TensorProto.FLOAT, 21, to=TensorProto.FLOAT)
    np.testing.assert_array_equal(NumpyModule(back)(got), _reference(back, {"x": got})[0])


def _reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnx's reference evaluator (onnxruntime's Python binding has no storage types)."""
    with np.errstate(all="ignore"):
        return list(ReferenceEvaluator(model).run(None, feeds))


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
def test_cast_to_float8e8m0_keeps_round_mode_at_its_opset(round_mode: str) -> None:
    """Cast-25's round_mode is not valid at 21: the model runs at its own opset."""
    x = np.array([0.3, 1.0, 1.5, 3.0, 1000.0, 2.0**-130, np.nan], dtype=np.float32)
    model = _single(
        "Cast",
        TensorProto.FLOAT,
        TensorProto.FLOAT8E8M0,
        25,
        to=TensorProto.FLOAT8E8M0,
        round_mode=round_mode,
    )
    got = NumpyModule(model)(x)
    ref = _reference(model, {"x": x})[0]
    assert got.dtype == ref.dtype == np.dtype(ml_dtypes.float8_e8m0fnu)
    np.testing.assert_array_equal(_bits(got), _bits(ref))


@pytest.mark.parametrize("to", [TensorProto.INT2, TensorProto.UINT2, TensorProto.FLOAT4E2M1])
def test_cast_to_types_newer_than_opset_21(to: int) -> None:
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 0.4, 5.0], dtype=np.float32)
    if to == TensorProto.UINT2:
        x = np.abs(x) % 4
    elif to == TensorProto.INT2:
        x = np.clip(x, -2, 1)
    model = _single("Cast", TensorProto.FLOAT, to, 25, to=to)
    got = NumpyModule(model)(x)
    ref = _reference(model, {"x": x})[0]
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(_bits(got), _bits(ref))


def test_calibration_refuses_a_storage_cast() -> None:
    from fhequant.onnx.ops.elementwise import cast_quant

    with pytest.raises(FhequantError, match="FLOAT8E4M3FN"):
        cast_quant(np.ones(3, np.float32), to=TensorProto.FLOAT8E4M3FN)


def test_opset_28_celu_float16_runs_with_its_new_type() -> None:
    model = _single("Celu", TensorProto.FLOAT16, TensorProto.FLOAT16, 28, shape=[3, 4], alpha=2.0)
    with pytest.raises(RuntimeError, match="Celu"):  # the converter: no float16 at Celu-12
        onnx.version_converter.convert_version(model, 21)
    x = RNG.normal(size=(3, 4)).astype(np.float16)
    got = NumpyModule(model)(x)
    ref = _reference(model, {"x": x})[0]
    assert got.dtype == ref.dtype == np.float16
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)


def test_range_float16_stash_type_computes_in_float32() -> None:
    model = _single("Range", TensorProto.FLOAT16, TensorProto.FLOAT16, 27, n_inputs=3, shape=[])
    start, limit, delta = (np.array(v, dtype=np.float16) for v in (1000.0, 1010.0, 0.7))
    got = NumpyModule(model)(start, limit, delta)
    ref = _reference(model, {"x": start, "b": limit, "c": delta})[0]
    assert got.dtype == ref.dtype == np.float16
    np.testing.assert_array_equal(got, ref)
    exact = (np.float32(1000) + np.arange(15, dtype=np.float32) * np.float32(delta)).astype(
        np.float16
    )
    np.testing.assert_array_equal(got, exact)


def test_opset_1_not_is_converted() -> None:
    graph = helper.make_graph(
        [helper.make_node("Not", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.BOOL, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, [3, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 1)])
    model.ir_version = 3
    x = RNG.integers(0, 2, size=(3, 4)).astype(bool)
    np.testing.assert_array_equal(NumpyModule(model)(x), ~x)


@pytest.mark.parametrize("opset", [13, 28])
def test_float_mod_fmod_0_is_a_typed_error(opset: int) -> None:
    """Opset 13 forbids it (onnxruntime refuses it); opset 28's float form is not implemented."""
    model = _single("Mod", TensorProto.FLOAT, TensorProto.FLOAT, opset, n_inputs=2, fmod=0)
    a = np.array([-4.3, 7.2], dtype=np.float32)
    with pytest.raises(FhequantError, match="fmod=0 takes integer inputs"):
        NumpyModule(model)(a, a)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5, 4)])
def test_training_mode_batchnorm_matches_onnxruntime(shape: tuple[int, ...]) -> None:
    nodes = helper.make_node(
        "BatchNormalization",
        ["x", "s", "b", "m", "v"],
        ["y", "rm", "rv"],
        training_mode=1,
        momentum=0.8,
        epsilon=1e-3,
    )
    c = shape[1]
    graph = helper.make_graph(
        [nodes],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [c]) for n in "sbmv"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [c]) for n in ("rm", "rv")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    feeds = {
        "x": RNG.normal(1, 2, size=shape).astype(np.float32),
        "s": RNG.normal(size=c).astype(np.float32),
        "b": RNG.normal(size=c).astype(np.float32),
        "m": RNG.normal(size=c).astype(np.float32),
        "v": RNG.uniform(0.5, 2, size=c).astype(np.float32),
    }
    got = NumpyModule(model)(*feeds.values())
    ref = run_ort(model, feeds)
    assert len(got) == 3
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == r.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
