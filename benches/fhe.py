"""FHE benchmark: MLP 64-128-128-10 on digits, 6 bits, rounding_threshold_bits=6.

``python benches/fhe.py brevitas`` runs only the Brevitas QAT MLP (key "brevitas_qat_mlp",
also part of the default run when brevitas is installed); ``python benches/fhe.py mlp`` runs
only the float MLP.

Prints ONE JSON object: compile time, PBS count, keygen time, execute latency per sample and
the float / clear / simulated accuracies, with the reference figures (Concrete ML 1.9 on its
own machine) and the ratios fhequant / reference. The baseline measured in the same run is
the clear quantized forward (fhe="disable") per sample, so the FHE slowdown is reported too,
and, for the compile, the same module compiled with concrete measuring bounds on the full
inputset (the previous approach; ``compile_warm_s`` is the default compile run after it).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import torch

from fhequant import build_quantized_module
from fhequant.fhe.demo import accuracy, load_digits_split, measure, train_mlp
from fhequant.fhe.module import compile_module

REFERENCE = {
    "compile_s": 0.73,
    "pbs_count": 2432,
    "keygen_s": 35.0,
    "execute_s_per_sample": 74.6,
    "float_accuracy": 97.3,
    "clear_accuracy": 97.1,
    "simulate_accuracy": 96.9,
}


def _fhe_figures(module: Any, x_test: np.ndarray, y_test: np.ndarray, samples: int) -> dict:
    """Figures shared by both models: circuit size, keygen, simulate and execute timings
    against the clear quantized forward per sample (the same-run baseline), accuracies."""
    circuit = module.fhe_circuit
    clear_acc = accuracy(module.forward(x_test), y_test)
    sim_logits, simulate_s = measure(lambda: module.forward(x_test, fhe="simulate"))
    _, keygen_s = measure(circuit.keygen)
    q = module.quantize_input(x_test[:samples])
    clear_q, clear_s = measure(lambda: [module.quantized_forward(q[[i]]) for i in range(samples)])
    enc_q, execute_s = measure(lambda: module.quantized_forward(q, fhe="execute"))
    return {
        "pbs_count": int(circuit.programmable_bootstrap_count),
        "max_bit_width": int(circuit.graph.maximum_integer_bit_width()),
        "predicted_max_bit_width": module.bitwidth_report().predicted_max_bit_width,
        "keygen_s": keygen_s,
        "execute_samples": samples,
        "execute_s_per_sample": execute_s / samples,
        "execute_matches_clear": bool(np.array_equal(enc_q, np.concatenate(clear_q))),
        "baseline_clear_s_per_sample": clear_s / samples,
        "fhe_over_clear": (execute_s / samples) / max(clear_s / samples, 1e-12),
        "simulate_s_per_sample": simulate_s / len(x_test),
        "clear_accuracy": clear_acc,
        "simulate_accuracy": accuracy(sim_logits, y_test),
    }


def brevitas_qat_mlp(samples: int) -> dict[str, object]:
    """A 3-bit Brevitas MLP 64-64-10 trained on digits, through compile_brevitas_qat_model."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "_support"))
    from fhequant import compile_brevitas_qat_model
    from qat_models import brevitas_mlp, digits_split, torch_predict, train

    x_train, y_train, x_test, y_test = digits_split()
    torch.manual_seed(0)
    net = train(brevitas_mlp(bits=3, hidden=64), x_train, y_train, epochs=6)
    brevitas_acc = accuracy(torch_predict(net, x_test), y_test)
    module, compile_s = measure(lambda: compile_brevitas_qat_model(net, x_train))
    return {
        "model": "Brevitas MLP 64-64-10, 3-bit weights/activations, 6 epochs, digits",
        "compile_s": compile_s,
        "brevitas_accuracy": brevitas_acc,
        **_fhe_figures(module, x_test, y_test, samples),
    }


def _has_brevitas() -> bool:
    try:
        import brevitas  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    samples = int(os.environ.get("FHEQUANT_BENCH_SAMPLES", "1"))
    if sys.argv[1:] == ["brevitas"]:
        json.dump({"brevitas_qat_mlp": brevitas_qat_mlp(samples)}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    x_train, x_test, y_train, y_test = load_digits_split()
    net = train_mlp(x_train, y_train, hidden=(128, 128))
    with torch.no_grad():
        float_acc = accuracy(net(torch.from_numpy(x_test)).numpy(), y_test)
    module, quant_s = measure(
        lambda: build_quantized_module(net, x_train, n_bits=6, rounding_threshold_bits=6)
    )
    _, compile_s = measure(lambda: module.compile(x_train))
    full, full_s = measure(lambda: compile_module(module, x_train, reduce_inputset=False))
    reduced, warm_s = measure(lambda: module.compile(x_train))
    result = {
        "model": "MLP 64-128-128-10, n_bits=6, rounding_threshold_bits=6, digits 75/25",
        "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "quantize_s": quant_s,
        "compile_s": compile_s,
        "compile_warm_s": warm_s,
        "baseline_compile_full_inputset_s": full_s,
        "full_inputset_over_reduced": full_s / max(warm_s, 1e-12),
        "reduced_inputset_same_mlir": bool(full.mlir == reduced.mlir),
        "float_accuracy": float_acc,
        **_fhe_figures(module, x_test, y_test, samples),
    }
    result["reference"] = REFERENCE
    result["ratio_to_reference"] = {k: (result[k] / v if v else None) for k, v in REFERENCE.items()}
    if sys.argv[1:] != ["mlp"] and _has_brevitas():
        result["brevitas_qat_mlp"] = brevitas_qat_mlp(samples)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
