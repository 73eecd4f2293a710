"""Command line: ``fhequant demo [--samples N]``, ``fhequant --version`` (also
``python -m fhequant ...``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

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
    args = parser.parse_args(argv)
    if args.samples < 0:
        parser.error("--samples must be >= 0")
    run_demo(samples=args.samples, hidden=args.hidden)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
