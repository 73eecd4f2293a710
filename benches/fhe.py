"""FHE benchmark: MLP 64-128-128-10 on digits, 6 bits, rounding_threshold_bits=6.

Prints ONE JSON object: compile time, PBS count, keygen time, execute latency per sample and
the float / clear / simulated accuracies, with the reference figures (Concrete ML 1.9 on its
own machine) and the ratios fhequant / reference. The baseline measured in the same run is
the clear quantized forward (fhe="disable") per sample, so the FHE slowdown is reported too.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

from fhequant import build_quantized_module
from fhequant.fhe.demo import accuracy, load_digits_split, measure, train_mlp

REFERENCE = {
    "compile_s": 0.73,
    "pbs_count": 2432,
    "keygen_s": 35.0,
    "execute_s_per_sample": 74.6,
    "float_accuracy": 97.3,
    "clear_accuracy": 97.1,
    "simulate_accuracy": 96.9,
}


def main() -> None:
    samples = int(os.environ.get("FHEQUANT_BENCH_SAMPLES", "1"))
    x_train, x_test, y_train, y_test = load_digits_split()
    net = train_mlp(x_train, y_train, hidden=(128, 128))
    with torch.no_grad():
        float_acc = accuracy(net(torch.from_numpy(x_test)).numpy(), y_test)
    module, quant_s = measure(
        lambda: build_quantized_module(net, x_train, n_bits=6, rounding_threshold_bits=6)
    )
    circuit, compile_s = measure(lambda: module.compile(x_train))
    clear_acc = accuracy(module.forward(x_test), y_test)
    sim_logits, simulate_s = measure(lambda: module.forward(x_test, fhe="simulate"))
    _, keygen_s = measure(circuit.keygen)
    q = module.quantize_input(x_test[:samples])
    clear_q, clear_s = measure(lambda: [module.quantized_forward(q[[i]]) for i in range(samples)])
    enc_q, execute_s = measure(lambda: module.quantized_forward(q, fhe="execute"))
    result = {
        "model": "MLP 64-128-128-10, n_bits=6, rounding_threshold_bits=6, digits 75/25",
        "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "quantize_s": quant_s,
        "compile_s": compile_s,
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
        "float_accuracy": float_acc,
        "clear_accuracy": clear_acc,
        "simulate_accuracy": accuracy(sim_logits, y_test),
    }
    result["reference"] = REFERENCE
    result["ratio_to_reference"] = {k: (result[k] / v if v else None) for k, v in REFERENCE.items()}
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
