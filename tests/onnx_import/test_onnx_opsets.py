"""Issue 13, ONNX layer: opsets 1 to the newest are read (converted to 13-21), IR-3 files,
compile_onnx_model's inputs, onnxruntime's output dtypes, ConvTranspose output_shape and
training-mode Dropout; each checked against onnxruntime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fhequant.errors import FhequantError, OnnxImportError, OpsetError, UnsupportedOpError
from fhequant.onnx import MAX_OPSET, MIN_OPSET, ONNX_OPS, NumpyModule
from fhequant.quantized.build import build_quantized_module
from onnx_testing import run_ort

RNG = np.random.default_rng(13)


def _f32(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, tuple[int, list[Any]]],
    outputs: dict[str, tuple[int, list[Any]]],
    inits: dict[str, np.ndarray],
    opset: int,
    ir_version: int,
    inits_as_inputs: bool = False,
) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(k, t, s) for k, (t, s) in inputs.items()]
    if inits_as_inputs:  # IR 3: every initializer is also a graph input
        ins += [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for k, v in inits.items()
        ]
    graph = helper.make_graph(
        nodes,
        "g",
        ins,
        [helper.make_tensor_value_info(k, t, s) for k, (t, s) in outputs.items()],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def _cnn(opset: int, ir_version: int, inits_as_inputs: bool = False) -> onnx.ModelProto:
    """Conv, Relu, MaxPool, Flatten, Gemm: ops that exist unchanged in spirit since opset 7."""
    inits = {
        "w": _f32(4, 2, 3, 3),
        "b": _f32(4),
        "fw": _f32(3, 36),
        "fb": _f32(3),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    return _model(
        nodes,
        {"x": (TensorProto.FLOAT, ["N", 2, 6, 6])},
        {"y": (TensorProto.FLOAT, ["N", 3])},
        inits,
        opset,
        ir_version,
        inits_as_inputs,
    )


def test_opset_range() -> None:
    assert MIN_OPSET == 1
    assert onnx.defs.onnx_opset_version() == MAX_OPSET


@pytest.mark.parametrize("opset", [7, 9, 11, 12, 13, 17, 21, 22, MAX_OPSET])
def test_opsets_7_to_newest_match_onnxruntime(opset: int) -> None:
    ir = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    model = _cnn(opset, ir_version=ir, inits_as_inputs=ir < 4)
    x = _f32(3, 2, 6, 6)
    got = NumpyModule(model)(x)
    ref = run_ort(model, {"x": x})[0]
    assert got.dtype == ref.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [7, 8])
def test_ir3_files_with_initializers_as_inputs(opset: int) -> None:
    model = _cnn(opset, ir_version=3, inits_as_inputs=True)
    x = _f32(2, 2, 6, 6)
    module = NumpyModule(model)
    assert module.input_names == ("x",)
    np.testing.assert_allclose(module(x), run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    # the user's own conversion (what OpsetError used to advise) also loads now
    converted = onnx.version_converter.convert_version(model, 14)
    assert converted.ir_version == 3
    np.testing.assert_allclose(NumpyModule(converted)(x), module(x), rtol=0, atol=0)


def test_old_ops_whose_signature_changed_are_converted() -> None:
    """Opset 9 Slice/Squeeze/Unsqueeze/ReduceSum: attributes that later became inputs."""
    nodes = [
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[1]),
        helper.make_node("Slice", ["u"], ["s"], starts=[1], ends=[3], axes=[2]),
        helper.make_node("Squeeze", ["s"], ["q"], axes=[1]),
        helper.make_node("ReduceSum", ["q"], ["y"], axes=[1], keepdims=0),
    ]
    model = _model(
        nodes,
        {"x": (TensorProto.FLOAT, ["N", 4])},
        {"y": (TensorProto.FLOAT, ["N"])},
        {},
        opset=9,
        ir_version=4,
    )
    x = _f32(5, 4)
    got = NumpyModule(model)(x)
    np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], rtol=1e-6)
    np.testing.assert_allclose(got, x[:, 1:3].sum(axis=1), rtol=1e-6)


def test_unconvertible_model_names_op_and_opset() -> None:
    """Opset-1 Pad (``paddings`` attribute): onnx's converter has no adapter for it."""
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Pad", ["x"], ["y"], paddings=[0, 1, 0, 1])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        ),
        opset_imports=[helper.make_opsetid("", 1)],
    )
    model.ir_version = 3
    with pytest.raises(OpsetError, match=r"opset 1 .*Pad.*re-export"):
        NumpyModule(model)


# --- compile_onnx_model / build_quantized_module inputs --------------------------------


def _mlp(opset: int) -> onnx.ModelProto:
    inits = {"w": _f32(4, 3), "b": _f32(3)}
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"]),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    ir = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    return _model(
        nodes,
        {"x": (TensorProto.FLOAT, ["N", 4])},
        {"y": (TensorProto.FLOAT, ["N", 3])},
        inits,
        opset,
        ir,
        inits_as_inputs=ir < 4,
    )


@pytest.mark.parametrize("opset", [7, 14, 22])
def test_build_accepts_a_file_path_and_any_opset(tmp_path: Path, opset: int) -> None:
    x = _f32(50, 4)
    model = _mlp(opset)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    from_proto = build_quantized_module(model, x, n_bits=6)
    for given in (path, str(path)):
        from_file = build_quantized_module(given, x, n_bits=6)
        np.testing.assert_array_equal(from_file.forward(x), from_proto.forward(x))


def test_compile_onnx_model_accepts_what_build_accepts(tmp_path: Path) -> None:
    from fhequant.torch import compile_onnx_model

    x = _f32(40, 4)
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp(11), path)
    module = compile_onnx_model(os.fspath(path), x, n_bits=4)
    reference = build_quantized_module(onnx.load(path), x, n_bits=4)
    np.testing.assert_array_equal(module.forward(x, fhe="simulate"), reference.forward(x))


def test_compile_onnx_model_missing_or_unreadable_file(tmp_path: Path) -> None:
    from fhequant.torch import compile_onnx_model

    x = _f32(10, 4)
    missing = tmp_path / "nope.onnx"
    with pytest.raises(OnnxImportError, match=r"nope\.onnx"):
        compile_onnx_model(missing, x)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model\xff" * 3)
    with pytest.raises(OnnxImportError, match=r"garbage\.onnx"):
        compile_onnx_model(str(garbage), x)


def test_compile_onnx_model_refuses_a_torch_module() -> None:
    import torch

    from fhequant.errors import ConfigurationError
    from fhequant.torch import compile_onnx_model

    with pytest.raises(ConfigurationError, match="compile_torch_model"):
        compile_onnx_model(torch.nn.Linear(4, 2), _f32(10, 4))


# --- output dtypes ---------------------------------------------------------------------


def _single(
    op: str,
    inputs: dict[str, np.ndarray],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    **attrs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    inits = inits or {}
    first = next(iter(inputs.values()))
    names = list(inputs) + list(inits)
    node = helper.make_node(op, names, ["y"], **attrs)
    model = _model(
        [node],
        {k: (helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)) for k, v in inputs.items()},
        {"y": (helper.np_dtype_to_tensor_dtype(first.dtype), [None] * first.ndim)},
        inits,
        opset,
        8,
    )
    got = NumpyModule(model)(*inputs.values())
    ref = run_ort(model, inputs)[0]
    return got, ref


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("op", "attrs", "init_shapes"),
    [
        ("Conv", {"pads": [1, 1, 1, 1]}, [(4, 2, 3, 3), (4,)]),
        ("ConvTranspose", {"strides": [2, 2]}, [(2, 3, 3, 3), (3,)]),
        ("AveragePool", {"kernel_shape": [2, 2], "pads": [1, 1, 0, 0]}, []),
    ],
)
def test_float_ops_keep_onnxruntime_dtype(
    op: str, attrs: dict[str, Any], init_shapes: list[tuple[int, ...]], dtype: Any
) -> None:
    x = RNG.normal(size=(2, 2, 5, 5)).astype(dtype)
    inits = {f"i{k}": RNG.normal(size=s).astype(dtype) for k, s in enumerate(init_shapes)}
    spec = ONNX_OPS[op]
    args = [x, *inits.values()]
    calibration = spec.quant_fn(*args, **spec.resolve_attrs(attrs))
    assert calibration.dtype == np.float64  # calibration keeps float64 (docs/contract.md §0)
    if dtype == np.float64:  # onnxruntime has no float64 kernel for these ops
        got = spec.fn(*args, **spec.resolve_attrs(attrs))
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, calibration)
        return
    got, ref = _single(op, {"x": x}, inits, **attrs)
    assert got.dtype == ref.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got, calibration.astype(np.float32))


@pytest.mark.parametrize(
    ("xdtype", "ydtype"),
    [
        (np.float32, np.int64),
        (np.float32, np.int32),
        (np.float32, np.float64),
        (np.int64, np.float32),
        (np.int32, np.float32),
        (np.int64, np.int64),
        (np.float64, np.float32),
    ],
)
def test_pow_returns_the_base_dtype(xdtype: Any, ydtype: Any) -> None:
    x = (RNG.uniform(0.5, 3.0, size=(3, 4)) * (4 if xdtype in (np.int64, np.int32) else 1)).astype(
        xdtype
    )
    y = RNG.uniform(0.0, 3.0, size=(3, 4)).astype(ydtype)
    try:
        ref = run_ort(
            _pow_model(x.dtype, y.dtype),
            {"x": x, "e": y},
        )[0]
    except Exception:  # onnxruntime has no kernel for this type pair
        pytest.skip(f"onnxruntime has no Pow kernel for {x.dtype}^{y.dtype}")
    got = NumpyModule(_pow_model(x.dtype, y.dtype))(x, y)
    assert got.dtype == ref.dtype == xdtype
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def _pow_model(xd: np.dtype, yd: np.dtype) -> onnx.ModelProto:
    return _model(
        [helper.make_node("Pow", ["x", "e"], ["y"])],
        {
            "x": (helper.np_dtype_to_tensor_dtype(xd), [3, 4]),
            "e": (helper.np_dtype_to_tensor_dtype(yd), [3, 4]),
        },
        {"y": (helper.np_dtype_to_tensor_dtype(xd), [3, 4])},
        {},
        15,
        8,
    )


# --- ConvTranspose output_shape, Dropout training_mode ---------------------------------


@pytest.mark.parametrize(
    ("in_hw", "strides", "output_shape", "auto_pad"),
    [
        ((3, 3), [3, 2], [10, 8], "NOTSET"),  # larger than the natural 9 x 7
        ((3, 3), [3, 2], [9, 7], "NOTSET"),  # the natural size
        ((4, 4), [2, 2], [8, 8], "NOTSET"),  # smaller: cropped
        ((4, 4), [2, 2], [8, 8], "SAME_UPPER"),
        ((3, 3), [2, 2], [8, 8], "SAME_UPPER"),
        ((3, 4), [2, 3], [7, 11], "NOTSET"),
    ],
)
def test_conv_transpose_output_shape(
    in_hw: tuple[int, int], strides: list[int], output_shape: list[int], auto_pad: str
) -> None:
    x = _f32(1, 1, *in_hw)
    inits = {"w": _f32(1, 2, 3, 3), "b": _f32(2)}
    got, ref = _single(
        "ConvTranspose",
        {"x": x},
        inits,
        strides=strides,
        output_shape=output_shape,
        auto_pad=auto_pad,
    )
    assert got.shape == ref.shape == (1, 2, *output_shape)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_conv_transpose_output_shape_too_large_is_refused() -> None:
    x = _f32(1, 1, 3, 3)
    inits = {"w": _f32(1, 2, 3, 3)}
    with pytest.raises(FhequantError, match="output_shape"):
        _single("ConvTranspose", {"x": x}, inits, strides=[2, 2], output_shape=[8, 9])
    model = _model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], output_shape=[8, 9])],
        {"x": (TensorProto.FLOAT, [1, 1, 3, 3])},
        {"y": (TensorProto.FLOAT, [None] * 4)},
        inits,
        17,
        8,
    )
    with pytest.raises(Exception, match="inconsistent"):
        run_ort(model, {"x": x})  # onnxruntime refuses it too


def _dropout(training: bool | None, ratio: float | None) -> onnx.ModelProto:
    inits: dict[str, np.ndarray] = {}
    ins = ["x", "", ""]
    if ratio is not None:
        inits["r"] = np.array(ratio, dtype=np.float32)
        ins[1] = "r"
    if training is not None:
        inits["t"] = np.array(training)
        ins[2] = "t"
    return _model(
        [helper.make_node("Dropout", [i for i in ins], ["y"])],
        {"x": (TensorProto.FLOAT, ["N", 3])},
        {"y": (TensorProto.FLOAT, ["N", 3])},
        inits,
        13,
        8,
    )


@pytest.mark.parametrize(("training", "ratio"), [(None, None), (False, 0.5), (True, 0.0)])
def test_inference_dropout_is_identity(training: bool | None, ratio: float | None) -> None:
    x = _f32(4, 3)
    model = _dropout(training, ratio)
    np.testing.assert_array_equal(NumpyModule(model)(x), run_ort(model, {"x": x})[0])


@pytest.mark.parametrize("ratio", [None, 0.5])
def test_training_dropout_is_refused(ratio: float | None) -> None:
    x = _f32(4, 3)
    with pytest.raises(UnsupportedOpError, match="training_mode"):
        NumpyModule(_dropout(True, ratio))(x)


def test_training_dropout_given_at_run_time_is_refused() -> None:
    model = _model(
        [helper.make_node("Dropout", ["x", "", "t"], ["y"])],
        {"x": (TensorProto.FLOAT, ["N", 3]), "t": (TensorProto.BOOL, [])},
        {"y": (TensorProto.FLOAT, ["N", 3])},
        {},
        13,
        8,
    )
    module = NumpyModule(model)
    x = _f32(4, 3)
    np.testing.assert_array_equal(module(x, np.array(False)), x)
    with pytest.raises(FhequantError, match="training_mode"):
        module(x, np.array(True))


def test_op_without_converter_adapter_is_relabelled() -> None:
    """GlobalMaxPool 22 only added types: onnx's converter has no 22 -> 21 adapter for it."""
    model = _model(
        [helper.make_node("GlobalMaxPool", ["x"], ["y"])],
        {"x": (TensorProto.FLOAT, ["N", 2, 3, 3])},
        {"y": (TensorProto.FLOAT, ["N", 2, 1, 1])},
        {},
        22,
        10,
    )
    with pytest.raises(Exception, match="GlobalMaxPool"):
        onnx.version_converter.convert_version(model, 21)
    x = _f32(2, 2, 3, 3)
    np.testing.assert_array_equal(NumpyModule(model)(x), run_ort(model, {"x": x})[0])


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_max_min_over_an_empty_set(op: str, dtype: Any) -> None:
    x = np.zeros((2, 0, 4), dtype=dtype)
    axes = {"axes": np.array([1], dtype=np.int64)}
    got, ref = _single(op, {"x": x}, axes, opset=18, keepdims=1)
    assert got.dtype == ref.dtype == dtype
    np.testing.assert_array_equal(got, ref)
