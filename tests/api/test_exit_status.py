"""A process that ran an FHE circuit exits with its real status (CI integrity).

concrete-python's exit handler ends a process that has run a circuit with status 0, whatever
Python was about to return (``fhequant._concrete``). These tests run real processes: scripts
that go through fhequant, the ``fhequant`` command line, and small pytest sessions with and
without ``fhequant.pytest_plugin``, and check each exit status.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# A circuit compiled and simulated with concrete directly (not through fhequant), which is
# what starts concrete's runtime and arms its exit handler.
_CONCRETE_SIMULATION = """
import warnings
warnings.simplefilter("ignore")
from concrete import fhe

@fhe.compiler({"x": "encrypted"})
def _halve(x):
    return fhe.univariate(lambda v: v // 2)(x) + 1

_circuit = _halve.compile(range(10))
assert _circuit.simulate(3) == 2
"""

# The same through fhequant: a tiny module compiled and simulated with forward(fhe=...).
_FHEQUANT_SIMULATION = """
import atexit, warnings
warnings.simplefilter("ignore")
atexit.register(print, "earlier atexit handler ran", flush=True)
import numpy
from fhequant import build_quantized_module
from onnx import helper, TensorProto, numpy_helper

w = numpy.array([[0.5, -1.0], [1.5, 0.25]], dtype=numpy.float32)
graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w"], ["y"])],
    "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    [numpy_helper.from_array(w, "w")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
x = numpy.random.RandomState(0).uniform(-1, 1, (20, 2)).astype(numpy.float32)
qm = build_quantized_module(model, x, n_bits=3)
qm.compile(x)
out = qm.forward(x[:2], fhe="simulate")
print("simulated", out.shape, flush=True)
"""


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return path


_CLI_ENDING = "from fhequant.__main__ import main\nraise SystemExit(main(['no-such-command']))\n"


@pytest.mark.parametrize(
    ("ending", "status", "message"),
    [
        ("raise RuntimeError('boom')", 1, "RuntimeError: boom"),
        # fhequant's command line, after a circuit ran: argparse's usage error status.
        (_CLI_ENDING, 2, "invalid choice: 'no-such-command'"),
    ],
)
def test_script_through_fhequant_keeps_its_status(
    tmp_path: Path, ending: str, status: int, message: str
) -> None:
    script = _script(tmp_path, _FHEQUANT_SIMULATION + ending + "\n")
    done = _run([sys.executable, str(script)], tmp_path)
    assert "simulated (2, 2)" in done.stdout, done.stderr
    assert done.returncode == status, done.stdout + done.stderr
    assert message in done.stderr
    # Python's shutdown ran in full: handlers registered before concrete was loaded still run.
    assert "earlier atexit handler ran" in done.stdout


def test_concrete_alone_loses_the_status(tmp_path: Path) -> None:
    """The bug the fixes work around, reproduced: if this fails, concrete has fixed it."""
    script = _script(tmp_path, _CONCRETE_SIMULATION + "raise SystemExit(3)\n")
    done = _run([sys.executable, str(script)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_preserve_exit_status_helper_for_direct_concrete_users(tmp_path: Path) -> None:
    body = (
        _CONCRETE_SIMULATION
        + "import fhequant\nassert fhequant.preserve_exit_status()\nraise SystemExit(3)\n"
    )
    done = _run([sys.executable, str(_script(tmp_path, body))], tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr


def test_preserve_exit_status_without_concrete_does_nothing(tmp_path: Path) -> None:
    body = """
    import sys, fhequant
    assert "concrete.compiler" not in sys.modules
    assert fhequant.preserve_exit_status() is False
    assert "concrete.compiler" not in sys.modules
    raise SystemExit(4)
    """
    done = _run([sys.executable, str(_script(tmp_path, body))], tmp_path)
    assert done.returncode == 4, done.stdout + done.stderr


_SESSION_TESTS = {
    "failing": "def test_simulates_then_fails():\n    assert 1 + 1 == 3\n",
    "passing": "def test_simulates_then_passes():\n    assert 1 + 1 == 2\n",
}


def _pytest_session(tmp_path: Path, kind: str, plugin: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(_CONCRETE_SIMULATION)
    if kind in _SESSION_TESTS:
        (tmp_path / "test_inner.py").write_text(_SESSION_TESTS[kind])
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    if plugin:
        args[3:3] = ["-p", "fhequant.pytest_plugin"]
    return _run(args, tmp_path)


@pytest.mark.parametrize(
    ("kind", "status", "summary"),
    [("failing", 1, "1 failed"), ("passing", 0, "1 passed"), ("empty", 5, "no tests ran")],
)
def test_pytest_plugin_reports_the_session_status(
    tmp_path: Path, kind: str, status: int, summary: str
) -> None:
    done = _pytest_session(tmp_path, kind, plugin=True)
    assert summary in done.stdout, done.stdout + done.stderr
    assert done.returncode == status, done.stdout + done.stderr


def test_pytest_session_without_the_plugin_hides_a_failure(tmp_path: Path) -> None:
    """Proves the sessions above exercise the bug: without the plugin, a failure exits 0."""
    done = _pytest_session(tmp_path, "failing", plugin=False)
    assert "1 failed" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
