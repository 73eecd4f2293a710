"""Several threads on one module give the sequential results; nothing is patched on an op.

The executor, its observer, the running op and the debug tracker are context variables
(``fhequant.quantized.exec.context``), so ``bitwidth_report``, ``forward`` (debug or not),
``dumps`` and the calibration walk may run concurrently. The threads switch every few
microseconds here (``sys.setswitchinterval``) so that their steps interleave inside each call.
"""

from __future__ import annotations

import ast
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from fhequant import build_quantized_module
from fhequant.torch import export_to_onnx
from repo_paths import ROOT

N_THREADS = 4
CALLS = 25

RNG = np.random.default_rng(7)
MLP_X = RNG.normal(size=(60, 10)).astype(np.float32)
CNN_X = RNG.normal(size=(24, 1, 6, 6)).astype(np.float32)


def _mlp() -> onnx.ModelProto:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(10, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8), torch.nn.Sigmoid()
    )
    net.append(torch.nn.Linear(8, 3))
    with torch.no_grad():
        net[2].weight.abs_()  # z_w != 0: the Σx correction nodes
    return export_to_onnx(net, MLP_X)


def _cnn() -> onnx.ModelProto:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2, ceil_mode=True),
        torch.nn.Flatten(),
        torch.nn.Linear(27, 3),
    )
    return export_to_onnx(net, CNN_X)


MLP = _mlp()
CNN = _cnn()


def _build(model: onnx.ModelProto, x: np.ndarray, batch_size: int) -> Any:
    return build_quantized_module(
        model, x, n_bits=4, rounding_threshold_bits=5, batch_size=batch_size
    )


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _run_threads(workers: list[Callable[[], Any]]) -> list[Any]:
    """Run each worker in its own thread, all started together; return their results
    (an exception raised by a worker is returned in its place)."""
    start = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = workers[i]()
        except Exception as exc:  # reported by the caller with the worker's index
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _repeat(fn: Callable[[], Any], n: int = CALLS) -> Callable[[], list[Any]]:
    return lambda: [fn() for _ in range(n)]


def _no_errors(results: list[Any]) -> None:
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} thread(s) raised: {errors[0]!r}"


@pytest.mark.usefixtures("fast_switching")
def test_bitwidth_report_from_threads() -> None:
    module = _build(MLP, MLP_X, 10_000)
    expected = module.bitwidth_report(MLP_X)
    assert expected.rows  # the report has per-op rows to compare
    results = _run_threads([_repeat(lambda: module.bitwidth_report(MLP_X))] * N_THREADS)
    _no_errors(results)
    for reports in results:
        for report in reports:
            assert report == expected


@pytest.mark.usefixtures("fast_switching")
def test_forward_while_others_report() -> None:
    module = _build(CNN, CNN_X, 10_000)
    expected_out = module.forward(CNN_X)
    expected_report = module.bitwidth_report(CNN_X, accumulator_bounds="worst_case")
    forward = _repeat(lambda: module.forward(CNN_X))
    report = _repeat(lambda: module.bitwidth_report(CNN_X, accumulator_bounds="worst_case"))
    results = _run_threads([forward, report, forward, report])
    _no_errors(results)
    for outs in results[0::2]:
        for out in outs:
            np.testing.assert_array_equal(out, expected_out)
    for reports in results[1::2]:
        for got in reports:
            assert got == expected_report


def _tracked(debug: dict[str, dict[str, Any]]) -> dict[tuple[str, str], list[np.ndarray]]:
    """The debug dict's arrays: (op, key) -> the tracked integers or floats."""
    out = {}
    for op, values in debug.items():
        for key, value in values.items():
            items = value if isinstance(value, list) else [value]
            out[(op, key)] = [np.asarray(getattr(v, "qvalues", v)) for v in items]
    return out


@pytest.mark.usefixtures("fast_switching")
def test_debug_forward_while_others_forward() -> None:
    module = _build(MLP, MLP_X, 10_000)
    other = MLP_X[::-1] * np.float32(2)  # other values: a leak would show
    expected_y, expected_debug = module.forward(MLP_X, debug=True)
    expected = _tracked(expected_debug)
    assert any(key == "accumulator" for _, key in expected)
    plain_y = module.forward(other)
    debug = _repeat(lambda: module.forward(MLP_X, debug=True), 10)
    plain = _repeat(lambda: module.forward(other), 10)
    results = _run_threads([debug, plain, debug, plain])
    _no_errors(results)
    for runs in results[0::2]:
        for y, tracked in runs:
            np.testing.assert_array_equal(y, expected_y)
            got = _tracked(tracked)
            assert got.keys() == expected.keys()
            for key, arrays in expected.items():
                for a, b in zip(got[key], arrays, strict=True):
                    np.testing.assert_array_equal(a, b)
    for runs in results[1::2]:
        for y in runs:
            np.testing.assert_array_equal(y, plain_y)


@pytest.mark.usefixtures("fast_switching")
def test_dumps_while_others_report() -> None:
    module = _build(MLP, MLP_X, 10_000)
    expected = module.dumps()
    dumps = _repeat(module.dumps)
    report = _repeat(lambda: module.bitwidth_report(MLP_X))
    results = _run_threads([dumps, report, report, report])
    _no_errors(results)
    assert all(text == expected for text in results[0])


@pytest.mark.usefixtures("fast_switching")
def test_streamed_calibration_of_two_modules_concurrently() -> None:
    # small blocks: the streamed walk with its rounding passes and split-free matmuls
    expected_mlp = _build(MLP, MLP_X, 16).dumps()
    expected_cnn = _build(CNN, CNN_X, 5).dumps()
    mlp = _repeat(lambda: _build(MLP, MLP_X, 16).dumps(), 3)
    cnn = _repeat(lambda: _build(CNN, CNN_X, 5).dumps(), 3)
    results = _run_threads([mlp, cnn, mlp, cnn])
    _no_errors(results)
    for texts in results[0::2]:
        assert all(text == expected_mlp for text in texts)
    for texts in results[1::2]:
        assert all(text == expected_cnn for text in texts)


# --- no instance patching -----------------------------------------------------------------

PATCHED = {"q_impl", "cnp_round", "call_impl"}
PACKAGE = ROOT / "python" / "fhequant"


def _patches(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Assignments and deletions of PATCHED attributes, calls naming them (setattr,
    ``__dict__.pop``) and tests for them (``"cnp_round" in op.__dict__``)."""
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.Delete):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute) and sub.attr in PATCHED:
                    yield node.lineno, f"assigns .{sub.attr}"
        if isinstance(node, ast.Call):  # setattr(op, "q_impl", f), op.__dict__.pop("q_impl")
            for arg in node.args:
                if isinstance(arg, ast.Constant) and arg.value in PATCHED:
                    yield node.lineno, f"passes {arg.value!r} to {ast.unparse(node.func)}"
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                if isinstance(operand, ast.Constant) and operand.value in PATCHED:
                    yield node.lineno, f"tests for a patched {operand.value!r}"


def test_the_patch_scan_finds_patches() -> None:
    code = (
        "op.q_impl = f\n"
        "del op.cnp_round\n"
        "setattr(op, 'call_impl', g)\n"
        "ok = 'cnp_round' in op.__dict__\n"
        "op.__dict__.pop('q_impl', None)\n"
        "op.calls = op.q_impl(x)\n"
    )
    assert [line for line, _ in _patches(ast.parse(code))] == [1, 2, 3, 4, 5]


def test_no_code_patches_ops() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {what}"
        for path in files
        for line, what in _patches(ast.parse(path.read_text(), str(path)))
    ]
    assert not found, "ops are configured through context, never patched:\n" + "\n".join(found)
