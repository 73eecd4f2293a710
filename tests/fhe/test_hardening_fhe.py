"""Bit-width report names and progress of the long FHE steps (issue 15).

The report names each op by its ONNX node (an exported graph output is a bare tensor id such
as "7"); compile, key generation and encrypted execution report their progress on a
terminal, everywhere with ``show_progress(True)`` or ``verbose=True``, and never with
``show_progress(False)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from onnx import helper

from fhequant import build_quantized_module
from fhequant.fhe import ensure_keys, execute, progress, show_progress
from ptq_helpers import make_model

RNG = np.random.default_rng(15)
X = RNG.normal(size=(40, 4)).astype(np.float32)


def _exported_style_mlp() -> Any:
    """Gemm -> Relu -> Gemm whose graph output is the bare tensor "7" (as torch exports)."""
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["/0/Gemm_output_0"], name="/0/Gemm", transB=1),
        helper.make_node("Relu", ["/0/Gemm_output_0"], ["/1/Relu_output_0"], name="/1/Relu"),
        helper.make_node("Gemm", ["/1/Relu_output_0", "w1"], ["7"], name="/2/Gemm", transB=1),
    ]
    inits = {
        "w0": RNG.normal(size=(6, 4)).astype(np.float32),
        "b0": RNG.normal(size=6).astype(np.float32),
        "w1": RNG.normal(size=(3, 6)).astype(np.float32),
    }
    return make_model(nodes, [("x", [None, 4])], [("7", [None, 3])], inits)


@pytest.fixture(scope="module")
def module() -> Any:
    return build_quantized_module(_exported_style_mlp(), X, n_bits=3)


@pytest.fixture
def progress_setting() -> Iterator[None]:
    yield
    show_progress(None)


# --- item: the report's rows carry node names --------------------------------------------


def test_bitwidth_report_names_each_row_by_its_node(module: Any) -> None:
    report = module.bitwidth_report(X)
    lines = str(report).splitlines()
    first_column = [line.split("  ")[0].strip() for line in lines[2 : 2 + len(report.rows)]]
    assert first_column == ["/0/Gemm (/0/Gemm_output_0)", "/2/Gemm (7)"]
    assert not any(name.isdigit() for name in first_column)
    last = report.rows[-1]
    assert (last.name, last.node) == ("7", "/2/Gemm")
    assert report.row("/2/Gemm") is report.row("7")
    with pytest.raises(KeyError, match="/2/Gemm"):
        report.row("nothing")


# --- item: progress of compile, keygen, execution ----------------------------------------


def test_compile_reports_its_progress_when_asked(
    module: Any, capsys: pytest.CaptureFixture[str], progress_setting: None
) -> None:
    show_progress(True)
    module.compile(X)
    err = capsys.readouterr().err
    assert "fhequant: compiling the FHE circuit" in err
    assert "inputset rows" in err and "done in" in err


class _FakeCircuit:
    """The circuit surface ``execute`` uses, counting key generations."""

    def __init__(self) -> None:
        self.keygens = 0
        self.keys = type("Keys", (), {"are_generated": False})()

    def keygen(self, force: bool = False, seed: int | None = None) -> None:
        if not self.keys.are_generated or force:
            self.keygens += 1
            self.keys.are_generated = True

    def encrypt(self, x: np.ndarray) -> np.ndarray:
        return x

    def run(self, x: np.ndarray) -> np.ndarray:
        return x + 1

    def decrypt(self, x: np.ndarray) -> np.ndarray:
        return x


def test_execution_reports_keygen_once_and_each_sample(
    capsys: pytest.CaptureFixture[str], progress_setting: None
) -> None:
    show_progress(True)
    circuit = _FakeCircuit()
    q = np.arange(6, dtype=np.int64).reshape(3, 2)
    out = execute(circuit, q)
    np.testing.assert_array_equal(out[0], q + 1)
    err = capsys.readouterr().err
    assert err.count("generating the FHE keys") == 2  # start and done lines
    assert "FHE execution: sample 3/3" in err
    execute(circuit, q[:1])
    err = capsys.readouterr().err
    assert "generating the FHE keys" not in err  # the keys exist
    assert "FHE execution (1 sample)" in err and "done in" in err
    assert circuit.keygens == 1


def test_progress_is_silent_without_a_terminal_or_when_switched_off(
    capsys: pytest.CaptureFixture[str], progress_setting: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = np.arange(4, dtype=np.int64).reshape(2, 2)
    execute(_FakeCircuit(), q)  # pytest's stderr is no terminal
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: True)
    assert progress.progress_enabled()
    show_progress(False)
    execute(_FakeCircuit(), q)
    ensure_keys(_FakeCircuit())
    assert capsys.readouterr().err == ""
    ensure_keys(_FakeCircuit(), verbose=True)  # a call's verbose=True still reports
    assert "generating the FHE keys" in capsys.readouterr().err


def test_a_terminal_gets_a_progress_bar(
    capsys: pytest.CaptureFixture[str], progress_setting: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: True)
    q = np.arange(8, dtype=np.int64).reshape(4, 2)
    execute(_FakeCircuit(), q)
    err = capsys.readouterr().err
    assert "FHE execution" in err and "4/4" in err and "sample" in err
