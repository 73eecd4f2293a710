"""Automatic bits against the hand configuration, and the cost model's prediction error.

On scikit-learn's digits: the MLP 64-128-128-10 (hand: n_bits 6, rounding_threshold_bits 6)
and the CNN of benches/ptq.py, Conv(1→8,3,p1)-ReLU-Conv(8→16,3,s2,p1)-ReLU-Linear(256→10)
(hand: n_bits 5, rounding 6). For each: ``fhequant.tune`` (time_budget 60 s, accuracy budget
1 point of validation accuracy against the float model, the default), then both modules
compiled; the same-run baseline is the hand configuration. Prints ONE JSON object with, per
model: the circuits' ``complexity`` and PBS counts (predicted and compiled), the ratio
auto / hand, the FHE-simulated test accuracies, the search time, and the cost model's
prediction errors (complexity and, with ``--execute``, the latency of one real encrypted
sample after keygen). With ``--execute``, ``encrypted_sample`` sets the measured latency
ratio auto / hand beside the complexity ratio and the cost model's predicted latency ratio;
the search's progress lines carry the elapsed seconds (where the search spends its time).

``python benches/tune.py [--execute] [--time-budget S] [mlp|cnn]``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from fhequant import build_quantized_module
from fhequant.fhe.demo import accuracy, load_digits_split, train_mlp
from fhequant.fhe.tune import tune

HAND = {"mlp": (6, 6), "cnn": (5, 6)}


def _cnn(x: np.ndarray, y: np.ndarray, epochs: int = 30) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(256, 10),
    )  # fmt: skip
    return train(net, x, y, epochs)


def train(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    """Adam, batches of 64, cross-entropy; also used by ``cost_model.py``."""
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.tensor(x), torch.tensor(y, dtype=torch.long)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def _figures(module: Any, x_test: np.ndarray, y_test: np.ndarray, execute: bool) -> dict:
    circuit = module.fhe_circuit
    # on the compile's inputset and bounds, at its p_error
    report = module.cost_report(p_error=circuit.configuration.p_error)
    out = {
        "complexity": float(circuit.complexity),
        "predicted_complexity": report.complexity,
        "complexity_prediction_error": report.complexity / float(circuit.complexity) - 1,
        "pbs": int(circuit.programmable_bootstrap_count),
        "predicted_pbs": report.total_pbs,
        "max_tlu_bits": report.max_tlu_bits,
        "predicted_key_bytes": report.key_bytes,
        "key_bytes": float(circuit.size_of_bootstrap_keys + circuit.size_of_keyswitch_keys),
        "simulated_test_accuracy": accuracy(module.forward(x_test, fhe="simulate"), y_test),
        "clear_test_accuracy": accuracy(module.forward(x_test), y_test),
        "predicted_latency_s": report.latency_s,
    }
    if execute:
        start = time.perf_counter()
        circuit.keygen()
        out["keygen_s"] = time.perf_counter() - start
        q = module.quantize_input(x_test[:1])
        start = time.perf_counter()
        module.quantized_forward(q, fhe="execute")
        out["execute_s"] = time.perf_counter() - start
        out["latency_prediction_error"] = report.latency_s / out["execute_s"] - 1
    return out


def bench(name: str, execute: bool, time_budget: float = 60.0) -> dict[str, Any]:
    x_train, x_test, y_train, y_test = load_digits_split()
    # the last 300 training rows are held out of training: the search's validation set
    x_fit, y_fit = x_train[:-300], y_train[:-300]
    if name == "mlp":
        net = train_mlp(x_fit, y_fit, hidden=(128, 128), epochs=40)
        shape = (-1, 64)
    else:
        shape = (-1, 1, 8, 8)
        net = _cnn(x_fit.reshape(shape), y_fit)
    x_train, x_test = x_train.reshape(shape), x_test.reshape(shape)
    x_cal, x_val, y_val = x_train, x_train[-300:], y_train[-300:]
    n, r = HAND[name]
    hand = build_quantized_module(net, x_cal, n_bits=n, rounding_threshold_bits=r)
    hand.compile(x_cal)
    hand_fig = _figures(hand, x_test, y_test, execute)
    start = time.perf_counter()

    def progress(line: str) -> None:  # elapsed seconds: where the search spends its time
        print(f"{time.perf_counter() - start:6.1f}s {line}", file=sys.stderr, flush=True)

    result = tune(
        net, x_cal, x_val, y_val, accuracy_budget=1.0, time_budget=time_budget,
        progress=progress,
    )  # fmt: skip
    search_s = time.perf_counter() - start
    auto_fig = _figures(result.module, x_test, y_test, execute)
    with torch.no_grad():
        float_acc = accuracy(net(torch.tensor(x_test)).numpy(), y_test)
    out = {
        "float_test_accuracy": float_acc,
        "hand": {"n_bits": n, "rounding_threshold_bits": r, **hand_fig},
        "auto": {
            "n_bits": result.n_bits,
            "rounding_threshold_bits": result.rounding_threshold_bits,
            "p_error": result.p_error,
            "search_s": search_s,
            "evaluated": len(result.candidates),
            "pareto": [
                {"complexity": c.complexity, "metric": c.metric, "p_error": c.p_error}
                for c in result.pareto
            ],
            **auto_fig,
        },
        "complexity_ratio_auto_over_hand": auto_fig["complexity"] / hand_fig["complexity"],
        "accuracy_delta_points": auto_fig["simulated_test_accuracy"]
        - hand_fig["simulated_test_accuracy"],
    }
    if execute:  # one real encrypted sample of each: does the latency follow the complexity?
        out["encrypted_sample"] = {
            "hand_execute_s": hand_fig["execute_s"],
            "auto_execute_s": auto_fig["execute_s"],
            "latency_ratio_auto_over_hand": auto_fig["execute_s"] / hand_fig["execute_s"],
            "complexity_ratio_auto_over_hand": out["complexity_ratio_auto_over_hand"],
            "predicted_latency_ratio": auto_fig["predicted_latency_s"]
            / hand_fig["predicted_latency_s"],
            "load_average": os.getloadavg()[0],
        }
        print(json.dumps({name: out["encrypted_sample"]}), file=sys.stderr, flush=True)
    out["targets_met"] = {
        "complexity_ratio<=0.3": out["complexity_ratio_auto_over_hand"] <= 0.3,
        "accuracy>=hand-0.5": out["accuracy_delta_points"] >= -0.5,
        "search<=60s": search_s <= 60,
        "time_budget": time_budget,
        "pbs_predicted==circuit": all(f["pbs"] == f["predicted_pbs"] for f in (hand_fig, auto_fig)),
    }
    return out


def main() -> None:
    execute = "--execute" in sys.argv
    names = [a for a in sys.argv[1:] if a in HAND] or list(HAND)
    budget = 60.0
    if "--time-budget" in sys.argv:  # for a loaded machine; the target is 60 s
        budget = float(sys.argv[sys.argv.index("--time-budget") + 1])
    results = {name: bench(name, execute, budget) for name in names}
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
