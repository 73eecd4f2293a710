"""Command line: ``fhequant demo [--samples N]``, ``fhequant tune MODEL.onnx --calibration
X.npy``, ``fhequant calibrate-cost``, ``fhequant --version`` (also ``python -m fhequant``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from fhequant._core import __version__
from fhequant.fhe.demo import run_demo


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fhequant`` console script.

    Args:
        argv: the arguments (default: sys.argv[1:]).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(prog="fhequant", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fhequant {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train an MLP on scikit-learn's digits, quantize it, compile it and run it under FHE",
    )
    demo.add_argument(
        "--samples",
        type=int,
        default=1,
        help=(
            "test rows to run under real encryption (default 1; about 15 s each on a laptop "
            "CPU, after about 30 s of compilation and key generation)"
        ),
    )
    demo.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[32],
        help="hidden layer sizes of the MLP (default 32)",
    )
    calibrate = sub.add_parser(
        "calibrate-cost",
        help="measure the cost model (PBS complexity, key sizes, seconds) on this machine",
    )
    calibrate.add_argument(
        "--output",
        default=None,
        help="where to write it (default ~/.cache/fhequant/cost_model.json, used by "
        "cost_report and tune from then on)",
    )
    calibrate.add_argument(
        "--max-bits", type=int, default=16, help="widest lookup input measured (default 16)"
    )
    _add_tune(sub)
    args = parser.parse_args(argv)
    if args.command == "tune":
        return _tune(args)
    if args.command == "calibrate-cost":
        return _calibrate_cost(args.output, args.max_bits)
    if args.samples < 0:
        parser.error("--samples must be >= 0")
    run_demo(samples=args.samples, hidden=args.hidden)
    return 0


def _add_tune(sub: Any) -> None:
    tune = sub.add_parser(
        "tune",
        help="search per-layer n_bits, rounding and p_error for the cheapest circuit within "
        "an accuracy budget",
    )
    tune.add_argument("model", help="the ONNX model file")
    tune.add_argument("--calibration", required=True, help=".npy calibration inputs")
    tune.add_argument("--validation", help=".npy validation inputs (default: calibration)")
    tune.add_argument("--labels", help=".npy validation labels (metric: accuracy)")
    tune.add_argument(
        "--accuracy-budget", type=float, default=1.0, help="points of metric to spend (1)"
    )
    tune.add_argument("--time-budget", type=float, default=60.0, help="seconds (default 60)")
    tune.add_argument("--output-dir", help="write tune.json, pareto.png and cost.png there")
    tune.add_argument("--quiet", action="store_true", help="no progress lines")


def _tune(args: Any) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from fhequant.errors import TuningError
    from fhequant.fhe.tune import tune

    def load(path: str) -> Any:
        return np.load(path, allow_pickle=False)

    try:
        result = tune(
            args.model,
            load(args.calibration),
            load(args.validation) if args.validation else None,
            load(args.labels) if args.labels else None,
            accuracy_budget=args.accuracy_budget,
            time_budget=args.time_budget,
            progress=not args.quiet,
        )
    except TuningError as exc:
        print(f"fhequant tune: {exc}", file=sys.stderr)
        return 2
    print(result.table())
    print(result.cost)
    print(
        json.dumps(
            {
                "n_bits": result.n_bits,
                "rounding_threshold_bits": result.rounding_threshold_bits,
                "p_error": result.p_error,
                "simulated_metric": result.metric,
            }
        )
    )
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tune.json").write_text(json.dumps(result.to_dict(), indent=1, default=str))
        result.plot(out / "pareto.png")
        result.cost.plot(out / "cost.png")
        print(f"wrote {out / 'tune.json'}, {out / 'pareto.png'}, {out / 'cost.png'}")
    return 0


def _calibrate_cost(output: str | None, max_bits: int) -> int:
    from fhequant.fhe.cost_model import measure_cost_model, user_cost_model_path

    model = measure_cost_model(max_bits=max_bits, progress=lambda line: print(line, flush=True))
    path = model.save(output or user_cost_model_path())
    print(f"cost model written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
