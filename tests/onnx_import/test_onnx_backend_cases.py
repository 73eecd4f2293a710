"""ONNX's own backend node test cases, generated in memory by the installed onnx
(``onnx.backend.test.case.node.collect_testcases``), run as generated (any opset) by
``NumpyModule`` and compared with onnxruntime in values, shapes and dtypes.

Kept: the cases whose op types are all default-domain ops fhequant's float interpreter
registers. The reference is onnxruntime on the case as generated; when onnxruntime cannot run
it (an opset or type it does not implement), onnxruntime on the case converted to opset 21 by
onnx.version_converter, and failing that the outputs onnx generated with the case.

Two figures are printed: over every kept case, and over the kept cases whose tensors all have
dtypes numpy computes with natively (bool, (u)int8-64, float16/32/64; not bfloat16, float8,
float4, int4, int2...). Both must reach 95 %; every case that does not match, in either
set, must fail with a typed fhequant error, never with another exception or a wrong answer.
"""

from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fhequant.errors import FhequantError
from fhequant.onnx import ONNX_OPS, NumpyModule

pytestmark = pytest.mark.slow

_NATIVE = frozenset(
    np.dtype(t).name
    for t in (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
    )
)
_TOL = {"float16": 1e-3, "float32": 1e-5, "float64": 1e-10}


@dataclass
class Outcome:
    matched: list[str] = field(default_factory=list)
    typed: dict[str, str] = field(default_factory=dict)
    wrong: dict[str, str] = field(default_factory=dict)  # mismatch or untyped exception
    references: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def total(self) -> int:
        return len(self.matched) + len(self.typed) + len(self.wrong)


def _array(v: Any) -> np.ndarray:
    return numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else np.asarray(v)


def _ort(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, dict(zip([i.name for i in sess.get_inputs()], inputs, strict=True)))
    return [_declared(v, o) for v, o in zip(out, model.graph.output, strict=True)]


def _declared(value: np.ndarray, output: onnx.ValueInfoProto) -> np.ndarray:
    """onnxruntime's Python binding hands some storage types (float8e4m3fn) back as their raw
    uint8 bits: read them as the type the graph declares."""
    declared = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(output.type.tensor_type.elem_type))
    if declared != value.dtype and declared.itemsize == value.dtype.itemsize == 1:
        return value.view(declared)
    return value


def _reference(case: Any, inputs: list[np.ndarray], outcome: Outcome) -> list[np.ndarray]:
    try:
        out = _ort(case.model, inputs)
        outcome.references["onnxruntime"] += 1
        return out
    except Exception:
        pass
    try:
        out = _ort(onnx.version_converter.convert_version(case.model, 21), inputs)
        outcome.references["onnxruntime (converted to opset 21)"] += 1
        return out
    except Exception:
        outcome.references["onnx's generated outputs"] += 1
        return [_array(v) for v in case.data_sets[0][1]]


def _compare(got: tuple[Any, ...], ref: list[np.ndarray]) -> str | None:
    """None when equal in shape, dtype and values (float: within the dtype's tolerance)."""
    if len(got) != len(ref):
        return f"{len(got)} outputs, expected {len(ref)}"
    for g, r in zip(got, ref, strict=True):
        g, r = np.asarray(g), np.asarray(r)
        if g.shape != r.shape:
            return f"shape {g.shape}, expected {r.shape}"
        if g.dtype != r.dtype:
            return f"dtype {g.dtype}, expected {r.dtype}"
        if r.dtype.type.__module__ == "ml_dtypes":  # storage types: the same bits
            if not np.array_equal(g.view(f"u{g.itemsize}"), r.view(f"u{r.itemsize}")):
                return "values differ"
        elif r.dtype.kind == "f":
            tol = _TOL.get(r.dtype.name, 1e-5)
            if not np.allclose(g, r, rtol=tol, atol=tol, equal_nan=True):
                return "values differ"
        elif not np.array_equal(g, r):
            return "values differ"
    return None


def _supported(case: Any) -> bool:
    return all(n.domain in ("", "ai.onnx") and n.op_type in ONNX_OPS for n in case.model.graph.node)


def _native(case: Any) -> bool:
    inputs, outputs = case.data_sets[0]
    return all(_array(v).dtype.name in _NATIVE for v in [*inputs, *outputs])


def _run(cases: list[Any]) -> Outcome:
    outcome = Outcome()
    for case in cases:
        inputs = [_array(v) for v in case.data_sets[0][0]]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = NumpyModule(case.model)(*inputs)
        except FhequantError as exc:
            outcome.typed[case.name] = f"{type(exc).__name__}: {exc}"
            continue
        except Exception as exc:
            outcome.wrong[case.name] = f"untyped {type(exc).__name__}: {exc}"
            continue
        got = res if isinstance(res, tuple) else (res,)
        why = _compare(got, _reference(case, inputs, outcome))
        if why is None:
            outcome.matched.append(case.name)
        else:
            outcome.wrong[case.name] = why
    return outcome


@pytest.fixture(scope="module")
def cases() -> list[Any]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        every = collect_testcases()
    return [c for c in every if c.model is not None and _supported(c)]


def _report(label: str, outcome: Outcome) -> float:
    rate = len(outcome.matched) / outcome.total
    print(
        f"\n{label}: {len(outcome.matched)}/{outcome.total} match onnxruntime "
        f"({100 * rate:.1f} %), {len(outcome.typed)} typed errors, {len(outcome.wrong)} "
        f"wrong; references: {dict(outcome.references)}"
    )
    kinds = collections.Counter(v.split(":")[0] for v in outcome.typed.values())
    print(f"  typed errors by class: {dict(kinds)}")
    return rate


def test_backend_node_cases_match_onnxruntime(cases: list[Any]) -> None:
    assert len(cases) > 500  # the generators did run
    native = [c for c in cases if _native(c)]
    everything = _run(cases)
    in_native = set(c.name for c in native)
    native_outcome = Outcome(
        matched=[n for n in everything.matched if n in in_native],
        typed={k: v for k, v in everything.typed.items() if k in in_native},
        wrong={k: v for k, v in everything.wrong.items() if k in in_native},
    )
    rate_all = _report("every case of a supported op type", everything)
    rate = _report("cases with numpy-native dtypes", native_outcome)
    assert not everything.wrong, everything.wrong
    # measured with onnx 1.23.2 / onnxruntime 1.32: 781/793 (98.5 %) and 672/684 (98.2 %); the
    # rest are typed errors: training-mode Dropout (random), MaxPool's Indices output, float Mod
    # with fmod=0 (opset 28's form; fhequant implements opset 13's, as onnxruntime)
    assert rate_all >= 0.95
    assert rate >= 0.95
