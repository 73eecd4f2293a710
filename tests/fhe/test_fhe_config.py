"""fhequant.fhe without compiling: configuration, argument names, statuses, errors
(docs/contract.md §6, §7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from concrete import fhe

from fhequant import build_quantized_module
from fhequant.errors import BitWidthError, ConfigurationError, GraphInputError, NotCompiledError
from fhequant.fhe import execute, simulate
from fhequant.fhe.compile import (
    DEFAULT_P_ERROR,
    argument_names,
    build_configuration,
    encryption_statuses,
)


def test_default_configuration() -> None:
    cfg = build_configuration()
    assert cfg.p_error == DEFAULT_P_ERROR == 2.0**-40
    assert cfg.global_p_error is None
    assert cfg.single_precision is False
    assert cfg.compress_evaluation_keys is True
    assert cfg.compress_input_ciphertexts is True


def test_global_p_error_only() -> None:
    cfg = build_configuration(global_p_error=1e-5)
    assert cfg.p_error is None
    assert cfg.global_p_error == 1e-5


def test_user_configuration_is_not_modified() -> None:
    user = fhe.Configuration(verbose=False, loop_parallelize=False)
    cfg = build_configuration(user, p_error=1e-3)
    assert user.p_error is None
    assert cfg.p_error == 1e-3
    assert cfg.loop_parallelize is False


def test_both_p_errors_rejected() -> None:
    with pytest.raises(ConfigurationError, match="p_error and global_p_error"):
        build_configuration(p_error=1e-3, global_p_error=1e-3)


@pytest.mark.parametrize("name", ["p_error", "global_p_error"])
def test_p_error_inside_configuration_rejected(name: str) -> None:
    cfg = fhe.Configuration(**{name: 1e-3})
    with pytest.raises(ConfigurationError, match=name):
        build_configuration(cfg)
    with pytest.raises(ConfigurationError, match=name):
        build_configuration(cfg, p_error=1e-4)


def test_rounding_without_multi_parameters_warns() -> None:
    mono = fhe.Configuration(parameter_selection_strategy=fhe.ParameterSelectionStrategy.MONO)
    with pytest.warns(UserWarning, match="MULTI"):
        build_configuration(mono, has_rounding=True)
    build_configuration(mono, has_rounding=False)  # no rounding: no warning (warnings = errors)
    build_configuration(None, has_rounding=True)  # MULTI by default: no warning


def test_argument_names() -> None:
    assert argument_names(["x", "input.1", "a-b c"]) == ["_x", "_input_1", "_a_b_c"]
    with pytest.raises(ConfigurationError, match="duplicate"):
        argument_names(["a.b", "a_b"])


def test_encryption_statuses() -> None:
    names = ["_a", "_b"]
    assert encryption_statuses(names, None) == {"_a": "encrypted", "_b": "encrypted"}
    assert encryption_statuses(names, ["Encrypted", "clear"]) == {"_a": "encrypted", "_b": "clear"}


@pytest.mark.parametrize(
    ("statuses", "match"),
    [
        (["encrypted"], "missing"),
        (["encrypted", "clear", "clear"], "extra"),
        (["encrypted", "secret"], "unknown"),
        (["clear", "clear"], "no 'encrypted'"),
        ("encrypted", "sequence"),
    ],
)
def test_encryption_status_errors(statuses: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        encryption_statuses(["_a", "_b"], statuses)  # type: ignore[arg-type]


def _mlp_module(n_in: int, n_bits: int, rtb: int | None = None) -> tuple[object, np.ndarray]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(n_in, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = np.random.default_rng(0).normal(size=(30, n_in)).astype(np.float32)
    return build_quantized_module(net, x, n_bits=n_bits, rounding_threshold_bits=rtb), x


def test_not_compiled_errors() -> None:
    module, x = _mlp_module(6, 4)
    q = module.quantize_input(x)
    with pytest.raises(NotCompiledError, match="compile"):
        module.forward(x, fhe="simulate")
    with pytest.raises(NotCompiledError, match="compile"):
        module.quantized_forward(q, fhe="execute")
    with pytest.raises(NotCompiledError, match="compile"):
        module.bitwidth_report()
    with pytest.raises(NotCompiledError):
        _ = module.forward_fhe
    assert module.fhe_circuit is None


def test_compile_argument_errors_before_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    module, x = _mlp_module(6, 4)

    def no_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("concrete must not be called")

    monkeypatch.setattr("fhequant.fhe.module.compile_forward", no_compile)
    with pytest.raises(ConfigurationError, match="p_error and global_p_error"):
        module.compile(x, p_error=1e-3, global_p_error=1e-3)
    with pytest.raises(ConfigurationError, match="p_error"):
        module.compile(x, configuration=fhe.Configuration(p_error=1e-3))
    with pytest.raises(ConfigurationError, match="no 'encrypted'"):
        module.compile(x, inputs_encryption_status=["clear"])
    with pytest.raises(ConfigurationError, match="extra"):
        module.compile(x, inputs_encryption_status=["encrypted", "clear"])
    with pytest.raises(ConfigurationError, match="accumulator_bounds"):
        module.compile(x, accumulator_bounds="typical")
    with pytest.raises(TypeError, match="float"):
        module.compile(x.astype(np.int64))


def test_wide_accumulator_raises_bit_width_error_before_compiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 1200-input 8-bit Gemm feeding a TLU needs more than 16 bits (docs/contract.md §7)."""
    module, x = _mlp_module(1200, 8)

    def no_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("concrete must not be called")

    monkeypatch.setattr("fhequant.fhe.module.compile_forward", no_compile)
    report = module.bitwidth_report(x)
    row = report.row("/0/Gemm_output_0")
    assert row.feeds_tlu and row.tlu_input_bits > 16
    assert not report.row("7").feeds_tlu  # the graph-output Gemm feeds no table lookup
    with pytest.raises(BitWidthError) as info:
        module.compile(x)
    message = str(info.value)
    assert "/0/Gemm_output_0" in message
    assert f"{row.tlu_input_bits} bits" in message
    assert "rounding_threshold_bits" in message and "n_bits" in message
    assert "'7'" not in message


def test_rounding_brings_the_table_lookup_under_the_limit() -> None:
    module, x = _mlp_module(1200, 8, rtb=8)
    report = module.bitwidth_report(x)
    row = report.row("/0/Gemm_output_0")
    assert row.bits > 16  # the accumulator itself stays wide
    assert row.tlu_input_bits == 8  # rounded to the threshold before the lookup
    assert "/0/Gemm_output_0" in str(report)


class _FakeCircuit:
    """The circuit surface run.py uses; doubles its input."""

    class configuration:  # noqa: N801 - mirrors concrete's attribute name
        p_error = 0.25

    def __init__(self, pks: int) -> None:
        self.packing_key_switch_count = pks
        self.log: list[str] = []

    def graph(self, x: np.ndarray, p_error: float | None = None) -> np.ndarray:
        self.log.append(f"graph p_error={p_error}")
        return x * 2

    def simulate(self, x: np.ndarray) -> np.ndarray:
        self.log.append("simulate")
        return x * 2

    def keygen(self, force: bool = False, seed: int | None = None) -> None:
        self.log.append(f"keygen force={force}")

    def encrypt(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.log.append("encrypt")
        return {"enc": x}

    def run(self, value: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"enc": value["enc"] * 2}

    def decrypt(self, value: dict[str, np.ndarray]) -> np.ndarray:
        return value["enc"]


@pytest.mark.parametrize(("pks", "call"), [(0, "simulate"), (3, "graph p_error=0.25")])
def test_simulate_runs_per_sample_and_falls_back_on_crt(pks: int, call: str) -> None:
    circuit = _FakeCircuit(pks)
    q = np.arange(12).reshape(4, 3)
    (out,) = simulate(circuit, q, progress=False)
    np.testing.assert_array_equal(out, q * 2)
    assert circuit.log == [call] * 4


def test_execute_generates_keys_once_per_call_and_runs_per_sample() -> None:
    circuit = _FakeCircuit(0)
    q = np.arange(6).reshape(3, 2)
    (out,) = execute(circuit, q, progress=False)
    np.testing.assert_array_equal(out, q * 2)
    assert circuit.log == ["keygen force=False", "encrypt", "encrypt", "encrypt"]
    with pytest.raises(GraphInputError, match="batch sizes"):
        execute(circuit, q, q[:2], progress=False)


class _NoisyCrtCircuit(_FakeCircuit):
    """A CRT circuit whose graph evaluation draws its errors from numpy's global generator,
    as concrete's does when given a p_error."""

    def graph(self, x: np.ndarray, p_error: float | None = None) -> np.ndarray:
        assert p_error is not None
        return x * 2 + (np.random.rand(*x.shape) < p_error)


def test_crt_simulation_does_not_depend_on_what_ran_before() -> None:
    q = np.arange(40).reshape(20, 2)
    np.random.seed(123)
    (first,) = simulate(_NoisyCrtCircuit(3), q, progress=False)
    caller_next = np.random.rand()
    np.random.seed(999)  # another module's calibration or simulation used the generator
    np.random.rand(1000)
    (second,) = simulate(_NoisyCrtCircuit(3), q, progress=False)
    np.testing.assert_array_equal(first, second)
    assert np.any(first != q * 2)  # errors were drawn (p_error 0.25)
    np.random.seed(123)
    (_,) = simulate(_NoisyCrtCircuit(3), q, progress=False)
    assert np.random.rand() == caller_next  # the caller's random stream is left as it was
