"""Command line (also ``python -m fhequant ...``):

* ``fhequant demo [--samples N]``: the digits MLP under FHE;
* ``fhequant serve ARTIFACT_DIR [--host H] [--port P]``: the encrypted-inference server;
* ``fhequant remote-predict URL INPUT.npy [--output OUT.npy]``: run a .npy file through it;
* ``fhequant tune MODEL.onnx --calibration X.npy``: search bits, rounding and p_error;
* ``fhequant calibrate-cost``: measure the cost model on this machine;
* ``fhequant --version``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from fhequant._core import __version__
from fhequant.deployment import RemoteClient, create_app
from fhequant.deployment.app import DEFAULT_LIMITS, MB
from fhequant.errors import MissingDependencyError
from fhequant.fhe.demo import run_demo


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fhequant`` console script.

    Args:
        argv: the arguments (default: sys.argv[1:]).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="fhequant",
        description="Quantize ML models for FHE; compile, run, serve and tune them.",
    )
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
    _add_serve(sub)
    _add_remote_predict(sub)
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
    calibrate.add_argument(
        "--quick",
        action="store_true",
        help="measure only the p_error classes 2**-40 and 1e-2 and time fewer circuits "
        "(about a third of the time; other p_error values are priced at the nearest "
        "measured class below them)",
    )
    _add_tune(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "remote-predict":
        return _remote_predict(args)
    if args.command == "tune":
        return _tune(args)
    if args.command == "calibrate-cost":
        return _calibrate_cost(args.output, args.max_bits, args.quick)
    if args.samples < 0:
        parser.error("--samples must be >= 0")
    run_demo(samples=args.samples, hidden=args.hidden)
    return 0


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve a model saved by FHEModelDev for encrypted inference (needs fhequant[serve])",
    )
    serve.add_argument("artifact_dir", help="the directory holding server.zip (and client.zip)")
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--keys-dir",
        default=None,
        help="where uploaded evaluation keys are kept (ARTIFACT_DIR/keys)",
    )
    limits = DEFAULT_LIMITS
    serve.add_argument(
        "--max-key-mb",
        type=float,
        default=limits["max_key_bytes"] / MB,
        help="largest evaluation-key upload in MiB (default %(default)g)",
    )
    serve.add_argument(
        "--max-request-mb",
        type=float,
        default=limits["max_request_bytes"] / MB,
        help="largest predict request in MiB (default %(default)g)",
    )
    serve.add_argument(
        "--max-loaded-keys",
        type=int,
        default=limits["max_loaded_keys"],
        help="evaluation keys each worker process keeps loaded (default %(default)d)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=limits["workers"],
        help="worker processes running circuits, in parallel (default %(default)d)",
    )
    serve.add_argument("--log-level", default="info", help="uvicorn's log level")


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError(
            "fhequant serve needs uvicorn and FastAPI: pip install fhequant[serve]"
        ) from exc
    app = create_app(
        args.artifact_dir,
        keys_dir=args.keys_dir,
        max_key_bytes=int(args.max_key_mb * MB),
        max_request_bytes=int(args.max_request_mb * MB),
        max_loaded_keys=args.max_loaded_keys,
        workers=args.workers,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _add_remote_predict(sub: Any) -> None:
    remote = sub.add_parser(
        "remote-predict",
        help="encrypt the rows of a .npy file, run them on an fhequant server, decrypt",
    )
    remote.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    remote.add_argument("input", help="a .npy file of float rows (rows on axis 0)")
    remote.add_argument("--output", default=None, help="write the outputs to this .npy file")
    remote.add_argument(
        "--client-dir", default=None, help="directory of client.zip (default: download it)"
    )
    remote.add_argument("--key-dir", default=None, help="where to keep the client's keys")
    remote.add_argument(
        "--integers", action="store_true", help="output the decrypted integers (no dequantize)"
    )


def _remote_predict(args: argparse.Namespace) -> int:
    import numpy as np

    x = np.load(args.input, allow_pickle=False)
    with RemoteClient(args.url, path_dir=args.client_dir, key_dir=args.key_dir) as client:
        y = client.predict(x, dequantize=not args.integers)
    outputs = y if isinstance(y, tuple) else (y,)
    if args.output is not None:
        np.save(args.output, outputs[0], allow_pickle=False)
    else:
        for out in outputs:
            print(np.array2string(np.asarray(out), threshold=1000))
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


def _calibrate_cost(output: str | None, max_bits: int, quick: bool = False) -> int:
    from fhequant.fhe.cost_model import (
        P_ERROR_CLASSES,
        QUICK_TIMING_CIRCUITS,
        TIMING_CIRCUITS,
        measure_cost_model,
        user_cost_model_path,
    )

    model = measure_cost_model(
        max_bits=max_bits,
        p_errors=(2.0**-40, 1e-2) if quick else P_ERROR_CLASSES,
        timing=QUICK_TIMING_CIRCUITS if quick else TIMING_CIRCUITS,
        progress=lambda line: print(line, flush=True),
    )
    path = model.save(output or user_cost_model_path())
    print(f"cost model written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
