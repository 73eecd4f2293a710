"""Histogram calibration statistics: MSE-optimal clipping and the KL/entropy threshold.

Both keep an exact histogram whose bins do not depend on the data: a value's bin is its
float32 bit pattern without the low ``23 - MANTISSA_BITS`` mantissa bits (a sign, the
exponent and the top mantissa bits: bins of relative width 2^-7 on a log scale). The counts
are integers, so the histogram of a tensor is the same for any split into blocks and the sum
of the histograms of disjoint parts (an exact :meth:`merge`), in a bounded memory (at most
2^16 bins, kept sparse). The exact min and max are kept as well, and
``finalize`` searches its range on the bins' centres (clipped to that range):

* :class:`MSEStatistic` (``"mse"``): the range ``[c + a(lo - c), c + a(hi - c)]`` (``c`` the
  point of [lo, hi] nearest 0, so a ReLU output keeps lo = 0) whose quantizer (the very
  options given to ``finalize``: n_bits, sign, symmetry) has the least squared error over the
  histogram, for ``a`` among ``grid`` linear steps in (0, 1] and ``grid`` geometric steps
  from 1 down to 1/1000;
* :class:`EntropyStatistic` (``"entropy"``, activations only): TensorRT's threshold ``t`` on
  ``|x|`` minimising the KL divergence between the clipped histogram (``bins`` uniform bins)
  and its quantization to 2^n (non-negative data) or 2^(n-1) levels, zeros left out (they are
  exact at any threshold); the range is ``[max(lo, -t), min(hi, t)]``.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

from fhequant import _core
from fhequant.errors import QuantizationError
from fhequant.quantization.options import STABILITY_CONST, QuantizationOptions
from fhequant.quantization.tensor_stats import (
    MinMaxStatistic,
    TensorStatistic,
    register_statistic,
)

__all__ = ["MANTISSA_BITS", "EntropyStatistic", "HistogramStatistic", "MSEStatistic"]

#: Mantissa bits kept in a bin key (bins of relative width 2^-MANTISSA_BITS).
MANTISSA_BITS = 7
_SHIFT = 23 - MANTISSA_BITS
_N_KEYS = 1 << (32 - _SHIFT)


def _int_param(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise QuantizationError(f"{what} must be an int, got {value!r}")
    if not low <= int(value) <= high:
        raise QuantizationError(f"{what} must be in [{low}, {high}], got {value}")
    return int(value)


@functools.lru_cache(maxsize=8)
def _shrink_factors(grid: int) -> np.ndarray:
    """Linear steps near the full range, geometric ones down to 1/1000 (heavy tails),
    from the widest."""
    factors = np.union1d(np.linspace(1.0, 1.0 / grid, grid), np.geomspace(1.0, 1e-3, grid))
    factors = factors[::-1].copy()
    factors.setflags(write=False)
    return factors


def _candidate_params(
    los: np.ndarray, his: np.ndarray, options: QuantizationOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(scale, zero point, wide, qlo, qhi) of the quantizer of each range [los, his]
    (element-wise, any shape; docs/contract.md §1.3): ``wide`` marks the ranges at least
    STABILITY_CONST wide (the others have scale 1 and are discarded by the caller)."""
    n = int(options.n_bits)
    offset = 2 ** (n - 1) if options.is_signed else 0
    qlo, qhi = -offset + (1 if options.is_narrow else 0), 2**n - 1 - offset
    delta = his - los
    wide = delta >= STABILITY_CONST
    safe = np.where(wide, delta, 1.0)
    if options.is_symmetric:
        scale = np.maximum(np.abs(los), np.abs(his)) / (2**n - 1 - offset)
        zp = np.zeros_like(scale)
    else:
        scale = safe / (2**n - 1)
        zp = (
            np.zeros_like(scale)
            if options.is_qat
            else np.rint((-his * offset - los * (2**n - 1 - offset)) / safe)
        )
    scale = np.where(wide & (scale > 0), scale, 1.0)
    return scale, zp, wide, qlo, qhi


def _squared_errors(
    values: np.ndarray,
    weights: np.ndarray,
    los: np.ndarray,
    his: np.ndarray,
    options: QuantizationOptions,
    prune: bool = False,
) -> np.ndarray:
    """Σ weights·(dequant(quant(values)) - values)² for the quantizer of each range
    [los[i], his[i]] (ranges narrower than STABILITY_CONST: inf); one row of
    :func:`_rows_squared_errors`."""
    return _rows_squared_errors(
        values[None, :], weights[None, :], los[None, :], his[None, :], options, prune
    )[0]


def _rows_squared_errors(
    values: np.ndarray,
    weights: np.ndarray,
    los: np.ndarray,
    his: np.ndarray,
    options: QuantizationOptions,
    prune: bool = False,
) -> np.ndarray:
    """The squared errors of many rows at once: ``values`` and ``weights`` (rows, K),
    ``los`` and ``his`` (rows, candidates) give (rows, candidates). The native kernel does
    numpy's element-wise steps in float64 and adds each row's terms in a fixed order, so a
    row's errors do not depend on the rows searched with it. With ``prune`` only each row's
    first least error is kept exact: candidates that cannot reach it may be +inf."""
    scale, zp, wide, qlo, qhi = _candidate_params(los, his, options)
    out = _core.mse_clip_errors(
        np.ascontiguousarray(values, dtype=np.float64),
        np.ascontiguousarray(weights, dtype=np.float64),
        np.ascontiguousarray(np.where(wide, scale, np.nan), dtype=np.float64),
        np.ascontiguousarray(zp, dtype=np.float64),
        float(qlo),
        float(qhi),
        prune,
    )
    return np.where(wide, out, np.inf)


def _key_centres(keys: np.ndarray, lo: Any, hi: Any) -> np.ndarray:
    """The centres (float64) of the bins of ``keys`` (any shape), clipped to [lo, hi]."""
    keys = keys.astype(np.uint32)
    first = (keys << np.uint32(_SHIFT)).view(np.float32).astype(np.float64)
    last_bits = (keys << np.uint32(_SHIFT)) | np.uint32((1 << _SHIFT) - 1)
    last = last_bits.view(np.float32).astype(np.float64)
    return np.clip((first + last) / 2, lo, hi)


def _keys_of(arr: np.ndarray) -> np.ndarray:
    """The bin key (an unsigned integer below 2^16) of each value, in the array's shape."""
    f32 = np.ascontiguousarray(arr, dtype=np.float32)
    if _SHIFT == 16 and sys.byteorder == "little" and f32.ndim:
        return f32.view(np.uint16)[..., 1::2]  # the high half of each value's bits: no pass
    return f32.view(np.uint32) >> np.uint32(_SHIFT)


def _sparse_add(
    keys: np.ndarray, counts: np.ndarray, more_keys: np.ndarray, more_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The sum of two sparse histograms (sorted unique int64 keys, int64 counts)."""
    if keys.size == 0:
        return more_keys, more_counts
    merged, inverse = np.unique(np.concatenate([keys, more_keys]), return_inverse=True)
    total = np.zeros(merged.size, dtype=np.int64)
    np.add.at(total, inverse, np.concatenate([counts, more_counts]))
    return merged, total


class HistogramStatistic(TensorStatistic):
    """An exact log-scale histogram with the exact min/max (base of MSE and entropy).

    The histogram is kept sparse: the sorted keys of the non-empty bins and their counts.
    """

    def __init__(self, n_total: int | None = None) -> None:
        super().__init__(n_total)
        self.keys = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.extremes = MinMaxStatistic()

    def update(self, block: Any) -> None:
        arr = self._block(block)
        if not arr.size:
            return
        self.extremes.update(arr)
        raw = _keys_of(arr.reshape(-1))
        if raw.size > 4096:  # large blocks: a dense count, then its non-empty bins
            dense = np.bincount(raw, minlength=_N_KEYS)
            keys = np.flatnonzero(dense)
            counts = dense[keys].astype(np.int64)
        else:
            keys, counts = np.unique(raw, return_counts=True)
            keys, counts = keys.astype(np.int64), counts.astype(np.int64)
        self.keys, self.counts = _sparse_add(self.keys, self.counts, keys, counts)

    def merge(self, other: TensorStatistic) -> TensorStatistic:
        self._check_mergeable(other)
        assert isinstance(other, HistogramStatistic)
        self._merge_dtype(other)
        self.extremes.merge(other.extremes)
        self.keys, self.counts = _sparse_add(self.keys, self.counts, other.keys, other.counts)
        return self

    def bins(self) -> tuple[np.ndarray, np.ndarray, Any, Any]:
        """(centres as float64, counts, lo, hi) of the non-empty bins; centres in [lo, hi]."""
        if self.keys.size == 0:
            self._ends(None, None)  # raises: nothing seen
        lo, hi = self.extremes.lo, self.extremes.hi
        return _key_centres(self.keys, float(lo), float(hi)), self.counts, lo, hi

    def dump_state(self) -> dict[str, Any]:
        return {
            "extremes": self.extremes.dump_state(),
            "keys": [int(k) for k in self.keys],
            "counts": [int(c) for c in self.counts],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.extremes.dtype = self.dtype
        self.extremes.load_state(state["extremes"])
        keys = np.asarray(state["keys"], dtype=np.int64)
        counts = np.asarray(state["counts"], dtype=np.int64)
        if keys.shape != counts.shape or keys.ndim != 1:
            raise ValueError("keys and counts differ in length")
        order = np.argsort(keys, kind="stable")
        self.keys, self.counts = keys[order], counts[order]


@register_statistic
class MSEStatistic(HistogramStatistic):
    """The clipping range of least squared quantization error.

    Args:
        n_total: unused.
        grid: the number of linear (and of geometric) shrink factors tried (default 100).
    """

    name = "mse"

    def __init__(self, n_total: int | None = None, grid: int = 100) -> None:
        super().__init__(n_total)
        self.grid = _int_param(grid, "mse grid", 2, 10_000)

    @property
    def params(self) -> dict[str, Any]:
        return {"grid": self.grid}

    def finalize(self, options: QuantizationOptions | None = None) -> np.ndarray:
        if options is None or options.n_bits is None:
            raise QuantizationError("the mse statistic needs the quantizer options (n_bits)")
        centres, counts, lo, hi = self.bins()
        lo64, hi64 = float(lo), float(hi)
        if lo64 == hi64:
            return self._ends(lo, hi)
        centre = min(max(0.0, lo64), hi64)
        factors = _shrink_factors(self.grid)
        los = centre + factors * (lo64 - centre)
        his = centre + factors * (hi64 - centre)
        errors = _squared_errors(centres, counts.astype(np.float64), los, his, options, True)
        best = int(np.argmin(errors))  # the first (widest) of equal errors
        if not np.isfinite(errors[best]):
            return self._ends(lo, hi)
        return self._ends(los[best], his[best])

    @classmethod
    def row_ranges(
        cls, rows: np.ndarray, options: QuantizationOptions | None = None, **params: Any
    ) -> np.ndarray:
        """The search of :meth:`finalize` for every row at once (the same ranges, bit for
        bit): each row's histogram is its sorted unique keys, and the rows with as many
        bins are searched together by :func:`_rows_squared_errors`."""
        grid = cls(**params).grid
        if options is None or options.n_bits is None:
            raise QuantizationError("the mse statistic needs the quantizer options (n_bits)")
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] == 0:
            raise QuantizationError("the mse statistic has seen no value in a row")
        lo, hi = rows.min(axis=1), rows.max(axis=1)
        out = np.stack([lo, hi], axis=1)
        lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
        keys = np.sort(_keys_of(rows), axis=1)
        new = np.ones(keys.shape, dtype=bool)
        new[:, 1:] = keys[:, 1:] != keys[:, :-1]
        n_bins = new.sum(axis=1)
        factors = _shrink_factors(grid)
        searched = lo64 != hi64
        for k in np.unique(n_bins[searched]):
            idx = np.flatnonzero(searched & (n_bins == k))
            cols = np.nonzero(new[idx])[1].reshape(len(idx), int(k))
            ukeys = np.take_along_axis(keys[idx], cols, axis=1)
            ends = np.concatenate([cols[:, 1:], np.full((len(idx), 1), rows.shape[1])], axis=1)
            counts = (ends - cols).astype(np.float64)
            l64, h64 = lo64[idx, None], hi64[idx, None]
            centres = _key_centres(ukeys, l64, h64)
            centre = np.minimum(np.maximum(0.0, l64), h64)
            los = centre + factors * (l64 - centre)
            his = centre + factors * (h64 - centre)
            errors = _rows_squared_errors(centres, counts, los, his, options, prune=True)
            best = np.argmin(errors, axis=1)  # the first (widest) of equal errors
            at = np.arange(len(idx))
            found = np.isfinite(errors[at, best])
            pick = idx[found]
            out[pick, 0] = los[at, best][found]
            out[pick, 1] = his[at, best][found]
        return out


@register_statistic
class EntropyStatistic(HistogramStatistic):
    """The KL-divergence (entropy) threshold of TensorRT, for activations.

    Args:
        n_total: unused.
        bins: uniform bins of ``|x|`` over [0, max|x|] (default 2048).
        candidates: at most this many thresholds are tried (default 128).
    """

    name = "entropy"
    for_weights = False

    def __init__(self, n_total: int | None = None, bins: int = 2048, candidates: int = 128) -> None:
        super().__init__(n_total)
        self.n_bins = _int_param(bins, "entropy bins", 16, 1 << 16)
        self.candidates = _int_param(candidates, "entropy candidates", 1, 1 << 16)

    @property
    def params(self) -> dict[str, Any]:
        return {"bins": self.n_bins, "candidates": self.candidates}

    def finalize(self, options: QuantizationOptions | None = None) -> np.ndarray:
        if options is None or options.n_bits is None:
            raise QuantizationError("the entropy statistic needs the quantizer options (n_bits)")
        centres, counts, lo, hi = self.bins()
        amax = max(abs(float(lo)), abs(float(hi)))
        if amax == 0.0:
            return self._ends(lo, hi)
        n_bits = int(options.n_bits)
        levels = 2**n_bits if float(lo) >= 0 else 2 ** max(n_bits - 1, 1)
        # zeros (a ReLU's many) are exact at any threshold: they are left out of P and Q
        magnitudes = np.abs(centres)
        keep = magnitudes > np.finfo(np.float32).tiny
        hist, _ = np.histogram(
            magnitudes[keep], bins=self.n_bins, range=(0.0, amax), weights=counts[keep]
        )
        if levels >= self.n_bins:
            return self._ends(lo, hi)
        step = max(1, (self.n_bins - levels) // self.candidates)
        best: tuple[float, int] | None = None
        for i in range(levels, self.n_bins + 1, step):
            kl = _kl_of_threshold(hist, i, levels)
            if best is None or kl < best[0]:
                best = (kl, i)
        assert best is not None
        threshold = best[1] * amax / self.n_bins
        return self._ends(max(float(lo), -threshold), min(float(hi), threshold))


def _kl_of_threshold(hist: np.ndarray, i: int, levels: int) -> float:
    """KL(P || Q): P the first i bins with the outliers added to the last one, Q the
    ``levels``-level quantization of the first i bins (without the outliers) spread back over
    their non-empty bins (TensorRT's construction)."""
    sliced = hist[:i].astype(np.float64)
    p = sliced.copy()
    p[-1] += hist[i:].sum()
    nonzero = sliced > 0
    edges = np.linspace(0, i, levels + 1).astype(np.int64)
    starts = edges[:-1]
    keep = np.diff(edges) > 0
    starts = starts[keep]
    totals = np.add.reduceat(sliced, starts)
    filled = np.add.reduceat(nonzero.astype(np.float64), starts)
    per_bin = np.divide(totals, filled, out=np.zeros_like(totals), where=filled > 0)
    lengths = np.diff(np.append(starts, i))
    q = np.repeat(per_bin, lengths) * nonzero
    p_sum, q_sum = p.sum(), q.sum()
    if p_sum == 0 or q_sum == 0:
        return float("inf")
    if np.any((p > 0) & (q == 0)):
        return float("inf")
    support = p > 0
    pn, qn = p[support] / p_sum, q[support] / q_sum
    return float(np.sum(pn * np.log(pn / qn)))
