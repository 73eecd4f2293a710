"""How well the cost model predicts concrete: complexity and key sizes on a dozen models
(compile only), and, with ``--execute``, the latency of one encrypted sample on three models
of different sizes (keygen + one run each; slow). The latency prediction uses the latency fit
(seconds per run, per unit of complexity and per PBS) timed in the same run, as
``calibrate-cost`` times it: the machine's load moves both alike; the stored fit's error is
also given. The timing is repeated after the executions, and the prediction with the mean of
both fits is reported too (the load may change during the run).

The models are trained for a few epochs on scikit-learn's digits (MLPs and CNNs of several
shapes, activations, n_bits, rounding and p_error). For each: the compiled circuit's
``complexity``, key sizes and PBS count against ``cost_report``'s predictions (the cost model
in use: ``FHEQUANT_COST_MODEL``, the machine's, or the packaged one). Prints ONE JSON object
with the per-model errors and their summary (largest absolute error, share within ±30 %).

``python benches/cost_model.py [--execute] [--only NAME ...]``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch
from torch import nn

from fhequant import build_quantized_module
from fhequant.fhe.cost_model import LatencyFit, load_cost_model, time_latency
from fhequant.fhe.demo import load_digits_split
from tune import train

#: name -> (layers, n_bits, rounding_threshold_bits, p_error)
MODELS: dict[str, tuple[str, Any, Any, float | None]] = {
    "mlp32_n6": ("mlp:32", 6, None, None),
    "mlp32_n4_p1e-2": ("mlp:32", 4, None, 1e-2),
    "mlp128x2_n6_r6": ("mlp:128,128", 6, 6, None),
    "mlp128x2_n5_r5_p1e-2": ("mlp:128,128", 5, 5, 1e-2),
    "mlp128x2_n4_r4_p1e-2": ("mlp:128,128", 4, 4, 1e-2),
    "mlp64_n3": ("mlp:64", 3, None, None),
    "mlp16x3_n6_r5_p1e-3": ("mlp:16,16,16", 6, 5, 1e-3),
    "mlp32_sigmoid_n5": ("mlp_sigmoid:32", 5, None, 1e-3),
    "mlp128_n8_r7_p5e-2": ("mlp:128", 8, 7, 5e-2),
    "cnn_n5_r6": ("cnn", 5, 6, None),
    "cnn_n4_r4_p1e-2": ("cnn", 4, 4, 1e-2),
    "cnn_n3_p1e-2": ("cnn", 3, None, 1e-2),
    "cnn_pool_n4_r5": ("cnn_pool", 4, 5, 1e-3),
}
#: The models whose latency is measured with --execute (small, medium, large).
TIMED = ("mlp16x3_n6_r5_p1e-3", "mlp128x2_n4_r4_p1e-2", "cnn_n4_r4_p1e-2")


def _net(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind.startswith("mlp"):
        act: type[nn.Module] = nn.Sigmoid if "sigmoid" in kind else nn.ReLU
        hidden = [int(h) for h in kind.split(":")[1].split(",")]
        layers: list[nn.Module] = []
        width = 64
        for h in hidden:
            layers += [nn.Linear(width, h), act()]
            width = h
        return nn.Sequential(*layers, nn.Linear(width, 10))
    if kind == "cnn_pool":
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10),
        )  # fmt: skip
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(256, 10),
    )  # fmt: skip


def measure(name: str, execute: bool, fit: LatencyFit | None = None) -> dict[str, Any]:
    kind, n_bits, rounding, p_error = MODELS[name]
    x_train, x_test, y_train, _ = load_digits_split()
    shape = (-1, 64) if kind.startswith("mlp") else (-1, 1, 8, 8)
    x_train, x_test = x_train.reshape(shape), x_test.reshape(shape)
    net = train(_net(kind), x_train, y_train, epochs=8)
    module = build_quantized_module(net, x_train, n_bits=n_bits, rounding_threshold_bits=rounding)
    start = time.perf_counter()
    predicted = module.cost_report(x_train, p_error=p_error)
    report_s = time.perf_counter() - start
    start = time.perf_counter()
    circuit = module.compile(x_train, p_error=p_error)
    compile_s = time.perf_counter() - start
    keys = float(circuit.size_of_bootstrap_keys + circuit.size_of_keyswitch_keys)
    out: dict[str, Any] = {
        "pbs": int(circuit.programmable_bootstrap_count),
        "predicted_pbs": predicted.total_pbs,
        "max_tlu_bits": predicted.max_tlu_bits,
        "complexity": float(circuit.complexity),
        "predicted_complexity": predicted.complexity,
        "complexity_error": predicted.complexity / float(circuit.complexity) - 1,
        "key_bytes": keys,
        "predicted_key_bytes": predicted.key_bytes,
        "key_bytes_ratio": predicted.key_bytes / keys,
        "cost_report_s": report_s,
        "compile_s": compile_s,
        "partitions": predicted.partitions,
        "_report": predicted,
    }
    if execute and name in TIMED:
        start = time.perf_counter()
        circuit.keygen()
        out["keygen_s"] = time.perf_counter() - start
        q = module.quantize_input(x_test[:1])
        start = time.perf_counter()
        module.quantized_forward(q, fhe="execute")
        out["execute_s"] = time.perf_counter() - start
        out["predicted_latency_s"] = predicted.latency_s
        out["latency_error_stored_fit"] = predicted.latency_s / out["execute_s"] - 1
        # the same-run fit: the machine's load now, as for the executions
        assert fit is not None
        out["predicted_latency_same_run_s"] = predicted.latency_with(fit)
        out["latency_error"] = predicted.latency_with(fit) / out["execute_s"] - 1
        out["load_average"] = os.getloadavg()[0]
    print(name, json.dumps({k: v for k, v in out.items() if "error" in k}), file=sys.stderr)
    return out


def main() -> None:
    execute = "--execute" in sys.argv
    only = [a for a in sys.argv[1:] if a in MODELS]
    names = only or list(MODELS)
    fit = None
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    if execute:  # the latency fit measured now (the load changes it)
        fit = time_latency(progress=say)
    results = {name: measure(name, execute, fit) for name in names}
    if execute and fit is not None:  # timed again after: the load may have moved
        after = time_latency(progress=say)
        mean = LatencyFit(
            (fit.per_complexity + after.per_complexity) / 2,
            (fit.per_pbs + after.per_pbs) / 2,
            (fit.per_run + after.per_run) / 2,
        )
        for r in results.values():
            if "execute_s" in r:
                r["latency_error_fit_after"] = r["_report"].latency_with(after) / r["execute_s"] - 1
                r["latency_error_mean_fit"] = r["_report"].latency_with(mean) / r["execute_s"] - 1
    for r in results.values():
        r.pop("_report")
    errors = [r["complexity_error"] for r in results.values()]
    summary: dict[str, Any] = {
        "cost_model": load_cost_model().meta,
        "max_abs_complexity_error": max(abs(e) for e in errors),
        "within_30pct": sum(abs(e) <= 0.3 for e in errors) / len(errors),
        "key_bytes_ratio_range": [
            min(r["key_bytes_ratio"] for r in results.values()),
            max(r["key_bytes_ratio"] for r in results.values()),
        ],
    }
    lat = [r["latency_error"] for r in results.values() if "latency_error" in r]
    if lat:
        summary["max_abs_latency_error"] = max(abs(e) for e in lat)
        summary["same_run_latency_fit"] = fit.to_dict() if fit else None
        summary["max_abs_latency_error_mean_fit"] = max(
            abs(r["latency_error_mean_fit"]) for r in results.values() if "latency_error" in r
        )
    print(json.dumps({"models": results, "summary": summary}, indent=1, default=str))


if __name__ == "__main__":
    main()
