"""The cost report's PBS count against a compiled circuit (fhequant.fhe.cost)."""

from __future__ import annotations

from typing import Any


def assert_pbs_predicted(module: Any) -> int:
    """The PBS count predicted before compiling (on the compile's inputset and bounds) equals
    the compiled circuit's ``programmable_bootstrap_count``; returns it."""
    report = module.cost_report()
    got = int(module.fhe_circuit.programmable_bootstrap_count)
    assert report.total_pbs == got, str(report)
    return got
