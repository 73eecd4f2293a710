"""Post-training quantization quality at low bit widths (prints ONE JSON object).

Models trained quickly with torch on scikit-learn's bundled digits (75/25 split, [0, 1]
pixels): the MLP 64-128-128-10 and the CNN of ``benches/ptq.py`` (Conv(1→8,3,p1)-ReLU-
Conv(8→16,3,s2,p1)-ReLU-Flatten-Linear(256→10)). For n_bits 2, 3 and 4 and each
``calibration=`` setting, the same run measures:

* the clear accuracy (``forward``), and with ``--simulate`` (for min/max and the best
  setting) the simulated FHE accuracy on ``--sim-rows`` test rows, whether it equals the
  clear one, the PBS count and the circuit's max bit width;
* the calibration time (best of ``--repeat`` runs), and its ratio to min/max's (the same-run
  baseline, alternated with the candidate);
* ``gap_closed``: (acc - acc_minmax) / (float - acc_minmax), in percent.

Usage: ``python benches/ptq_quality.py [--simulate] [--sim-rows N] [--repeat R]``. On a loaded
machine the timings are noisy: use ``--repeat 5`` or more (the minimum of each side is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch

from fhequant import build_quantized_module
from fhequant.fhe.demo import accuracy, load_digits_split, train_mlp

CALIBRATIONS: dict[str, Any] = {
    "minmax": None,
    "percentile": "percentile",
    "entropy": "entropy",
    "mse": "mse",
    "mse_weights": {"weights": "mse"},
    "per_channel": {"per_channel": True},
    "bias_correction": {"bias_correction": True},
    "per_channel+mse_weights": {"per_channel": True, "weights": "mse"},
    "per_channel+mse": {"per_channel": True, "weights": "mse", "activations": "mse"},
    "per_channel+mse+bias_correction": {
        "per_channel": True,
        "weights": "mse",
        "activations": "mse",
        "bias_correction": True,
    },
    "per_channel+mse_weights+bias_correction": {
        "per_channel": True,
        "weights": "mse",
        "bias_correction": True,
    },
    "asym_per_channel": {"per_channel": "asymmetric"},
    "asym_per_channel+mse_weights": {"per_channel": "asymmetric", "weights": "mse"},
    "asym_per_channel+mse_weights+bias_correction": {
        "per_channel": "asymmetric",
        "weights": "mse",
        "bias_correction": True,
    },
    "asym_per_channel+mse+bias_correction": {
        "per_channel": "asymmetric",
        "weights": "mse",
        "activations": "mse",
        "bias_correction": True,
    },
}


def train_cnn(x: np.ndarray, y: np.ndarray, epochs: int = 30, seed: int = 0) -> Any:
    """The CNN of benches/ptq.py, trained with AdamW (lr 3e-3) on 1x8x8 digits."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 10),
    )
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return net.eval()


def _calibrate(net: Any, x: np.ndarray, n_bits: int, calibration: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    module = build_quantized_module(net, x, n_bits=n_bits, calibration=calibration)
    return module, time.perf_counter() - start


def _case(
    net: Any,
    data: tuple[np.ndarray, ...],
    n_bits: int,
    calibration: Any,
    args: argparse.Namespace,
) -> tuple[Any, dict[str, Any]]:
    x_train, x_test, y_test = data
    baseline, candidate = [], []
    module = None
    for _ in range(args.repeat):  # alternate baseline and candidate, keep the minima
        baseline.append(_calibrate(net, x_train, n_bits, None)[1])
        module, seconds = _calibrate(net, x_train, n_bits, calibration)
        candidate.append(seconds)
    assert module is not None
    row: dict[str, Any] = {
        "clear_accuracy": accuracy(module.forward(x_test), y_test),
        "calibration_s": min(candidate),
        "minmax_calibration_s": min(baseline),
        "calibration_over_minmax": min(candidate) / max(min(baseline), 1e-12),
    }
    return module, row


def _simulate(
    module: Any, data: tuple[np.ndarray, ...], args: argparse.Namespace
) -> dict[str, Any]:
    x_train, x_test, y_test = data
    rows = x_test[: args.sim_rows]
    module.compile(x_train)
    circuit = module.fhe_circuit
    sim = module.forward(rows, fhe="simulate")
    return {
        "simulate_accuracy": accuracy(sim, y_test[: args.sim_rows]),
        "simulate_rows": len(rows),
        "simulate_equals_clear": bool(np.array_equal(sim, module.forward(rows))),
        "pbs_count": int(circuit.programmable_bootstrap_count),
        "max_bit_width": int(circuit.graph.maximum_integer_bit_width()),
    }


def _model(name: str, net: Any, data: tuple[np.ndarray, ...], args: argparse.Namespace) -> Any:
    x_test, y_test = data[1], data[2]
    with torch.no_grad():
        float_acc = accuracy(net(torch.from_numpy(x_test)).numpy(), y_test)
    result: dict[str, Any] = {"float_accuracy": float_acc, "n_bits": {}}
    for n_bits in args.bits:
        modules, rows = {}, {}
        for key, cal in CALIBRATIONS.items():
            modules[key], rows[key] = _case(net, data, n_bits, cal, args)
        base = rows["minmax"]["clear_accuracy"]
        for row in rows.values():
            gap = float_acc - base
            row["gap_closed_pct"] = (
                100.0 * (row["clear_accuracy"] - base) / gap if gap > 0 else None
            )
        best = max(rows, key=lambda k: rows[k]["clear_accuracy"])
        if args.simulate:  # compiled: min/max and the best opt-in combination
            for key in dict.fromkeys(("minmax", best)):
                rows[key].update(_simulate(modules[key], data, args))
        result["n_bits"][str(n_bits)] = {"best": best, "rows": rows}
        print(f"{name} n_bits={n_bits}: best {best}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--simulate", action="store_true", help="compile and simulate too")
    parser.add_argument("--sim-rows", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    x_train, x_test, y_train, y_test = load_digits_split()
    mlp = train_mlp(x_train, y_train, hidden=(128, 128))
    cnn = train_cnn(x_train.reshape(-1, 1, 8, 8), y_train)
    result = {
        "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "calibrations": {k: v for k, v in CALIBRATIONS.items()},
        "mlp": _model("mlp", mlp, (x_train, x_test, y_test), args),
        "cnn": _model(
            "cnn",
            cnn,
            (x_train.reshape(-1, 1, 8, 8), x_test.reshape(-1, 1, 8, 8), y_test),
            args,
        ),
    }
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
