"""Element-wise outputs by table as views (no stored blocks) against a checkout that stores them.

Calibrates the benchmark MLP (``ptq.mlp_model``, 6 bits) with ``quantize_module`` in child
processes, alternating between this checkout and ``--before`` (the ``python`` directory of a
checkout without views, given as an absolute path), and reports for each:

* ``streamed_1m``: 1M rows streamed from a re-iterable (default 32 MiB memory budget);
* ``in_memory_100k``: 100k rows in one array (nothing spilled);
* per run: wall time, user and system CPU seconds and minor page faults
  (``resource.getrusage`` deltas around the calibration), spilled bytes;
* ``bytes``: an untimed run per checkout recording, per tensor, the bytes the store held in
  memory and the bytes it spilled.

Ratios are ``after / before`` of the min and the median over runs, in this run only.

Usage: ``python benches/table_views.py --before /abs/path/to/old/python [--runs N]
[--rows-scale F]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_AFTER = os.path.join(os.path.dirname(_HERE), "python")

_CHILD = """
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {benches!r})
from calibration_vs_ort import Batches
from ptq import mlp_model
from fhequant.quantized.calibration.walk import quantize_module
from fhequant.quantized.streaming import TensorStore, normalize_calibration_data

mode, rows, repeat = {mode!r}, {rows}, {repeat}
held, spilled = {{}}, {{}}
if mode == "bytes":
    put = TensorStore.put

    def recording(self, name, block, owned=True, dtype=None):
        before = self.spilled_bytes
        put(self, name, block, owned=owned, dtype=dtype)
        if owned:
            went = self.spilled_bytes - before
            size = self.get_stored(name, self.n_blocks(name) - 1).nbytes
            spilled[name] = spilled.get(name, 0) + went
            held[name] = held.get(name, 0) + (size if not went else 0)

    TensorStore.put = recording
if mode == "in_memory":
    data = np.random.default_rng(0).standard_normal((rows, 64), dtype=np.float32)
runs = []
for _ in range(repeat):
    calib = Batches(rows, (64,)) if mode != "in_memory" else data
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    result = quantize_module(mlp_model(), normalize_calibration_data(calib), n_bits=6)
    wall = time.perf_counter() - start
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    runs.append({{
        "wall_s": wall,
        "user_s": r1.ru_utime - r0.ru_utime,
        "sys_s": r1.ru_stime - r0.ru_stime,
        "minflt": r1.ru_minflt - r0.ru_minflt,
        "spilled_bytes": result["spilled_bytes"],
    }})
print(json.dumps({{"runs": runs, "held": held, "spilled": spilled}}))
"""


def _child(python_path: str, mode: str, rows: int, repeat: int) -> dict[str, Any]:
    code = _CHILD.format(benches=_HERE, mode=mode, rows=rows, repeat=repeat)
    env = dict(os.environ, PYTHONPATH=python_path)
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    )
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(runs)}
    for key in ("wall_s", "user_s", "sys_s", "minflt"):
        values = [r[key] for r in runs]
        out[key] = {"min": round(min(values), 4), "median": round(statistics.median(values), 4)}
    out["spilled_mib"] = round(runs[0]["spilled_bytes"] / 2**20, 1)
    return out


def _ratios(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{key}_{stat}": round(after[key][stat] / before[key][stat], 3)
        for key in ("wall_s", "user_s", "sys_s", "minflt")
        for stat in ("min", "median")
        if before[key][stat]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="absolute path of the old python dir")
    parser.add_argument("--runs", type=int, default=4, help="alternated child processes")
    parser.add_argument("--rows-scale", type=float, default=1.0)
    args = parser.parse_args()
    sides = {"before": os.path.abspath(args.before), "after": _AFTER}
    cases = {
        "streamed_1m": ("streamed", int(1_000_000 * args.rows_scale), 1),
        "in_memory_100k": ("in_memory", int(100_000 * args.rows_scale), 3),
    }
    result: dict[str, Any] = {}
    for case, (mode, rows, repeat) in cases.items():
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for _ in range(args.runs):
            for side, path in sides.items():
                runs[side].extend(_child(path, mode, rows, repeat)["runs"])
        summary = {side: _summary(r) for side, r in runs.items()}
        summary["after_over_before"] = _ratios(summary["after"], summary["before"])
        result[case] = {"rows": rows, **summary}
    rows = int(1_000_000 * args.rows_scale)
    result["bytes_streamed_1m"] = {}
    for side, path in sides.items():
        found = _child(path, "bytes", rows, 1)
        result["bytes_streamed_1m"][side] = {
            name: {
                "held_mib": round(found["held"].get(name, 0) / 2**20, 1),
                "spilled_mib": round(found["spilled"].get(name, 0) / 2**20, 1),
            }
            for name in sorted(set(found["held"]) | set(found["spilled"]))
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
