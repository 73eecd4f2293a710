"""Exact streamed percentiles near the ends of a tensor (BatchNorm's clip, docs/contract.md
§3.7): the selector lives in :mod:`fhequant.quantization.tails`; this module keeps its old
import path."""

from __future__ import annotations

from fhequant.quantization.tails import TailSelector, percentile_from_tails

__all__ = ["TailSelector", "percentile_from_tails"]
