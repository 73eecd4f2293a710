"""Long FHE runs (real encryption at the default p_error, the demo); run with ``-m slow``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cost_checks import assert_pbs_predicted
from fhequant import build_quantized_module
from fhequant.__main__ import main
from fhequant.fhe.demo import load_digits_split, train_mlp


@pytest.mark.slow
def test_execute_digits_mlp_matches_clear() -> None:
    x_train, x_test, y_train, _ = load_digits_split()
    net = train_mlp(x_train, y_train, hidden=(16,), epochs=20)
    module = build_quantized_module(net, x_train, n_bits=6, rounding_threshold_bits=6)
    module.compile(x_train)
    assert module.bitwidth_report().predicted_max_bit_width == (
        module.fhe_circuit.graph.maximum_integer_bit_width()
    )
    assert_pbs_predicted(module)
    q = module.quantize_input(x_test[:2])
    np.testing.assert_array_equal(
        module.quantized_forward(q, fhe="execute"), module.quantized_forward(q)
    )
    with torch.no_grad():
        assert np.isfinite(net(torch.from_numpy(x_test)).numpy()).all()


@pytest.mark.slow
def test_demo_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--samples", "1", "--hidden", "16"]) == 0
    out = capsys.readouterr().out
    for key in ("float accuracy", "FHE-simulated accuracy", "PBS count", "keygen time"):
        assert key in out
    assert "same integers as clear    100.0 %" in out
    # issue 15: the long steps are announced before they run (the demo was silent for ~45 s)
    for step in ("compiling the FHE circuit", "generating the FHE keys", "under encryption"):
        assert step in out
