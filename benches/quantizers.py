"""QuantizedArray construction and dequant: native kernels vs plain numpy vs a memory copy.

Prints ONE JSON object. For 10M float64 and 10M float32 values it times, in the same run:
* ``copy``: ``x.copy()``, the memory-bandwidth floor;
* ``numpy_construction``: what construction costs with plain numpy (min, max, params, the
  quant formula with clip, the deep copy of values, np.unique(np.round(x, 2)));
* ``kernels_construction``: the same work through ``_kernels`` (min_max, rounded_unique,
  quantize) plus the deep copy;
* ``qa_construction`` / ``qa_dequant``: ``QuantizedArray(8, x)`` and ``.dequant()`` when the
  quantizer classes are present (construction alternated with the copy); the qvalues and the
  unique values are computed on first read, so ``qa_construction_and_qvalues`` also times
  the first ``.qvalues``;
* ``kernels_copy_min_max``: the copy and the min/max scan in one read of the data, the
  first pass of ``QuantizedArray(8, x)`` (alternated with the copy), and
  ``kernels_copy_and_min_max`` the two done one after the other;
* ``numpy_dequant`` / ``kernels_dequant``: the dequant formula alone.
Times are the best of ``--repeat`` runs, in seconds. Run after ``maturin develop -r``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fhequant.kernels import quant as kern

N_BITS = 8


def best(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def alternating(fns: list[Callable[[], Any]], repeat: int) -> list[float]:
    """Best wall time of each function, the functions run in turn ``repeat`` times."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for slot, fn in zip(times, fns, strict=True):
            t0 = time.perf_counter()
            fn()
            slot.append(time.perf_counter() - t0)
    return [min(t) for t in times]


def params(rmin: Any, rmax: Any) -> tuple[np.float64, np.int64]:
    """Unsigned asymmetric scale and zero point (docs/contract.md §1.3)."""
    delta = rmax - rmin
    scale = np.float64(delta) / (2**N_BITS - 1)
    zp = np.int64(np.rint(-np.float64(rmin) * (2**N_BITS - 1) / np.float64(delta)))
    return scale, zp


def numpy_construction(x: np.ndarray) -> Any:
    rmin, rmax = x.min(), x.max()
    np.unique(np.round(x, 2))
    values = x.copy()
    scale, zp = params(rmin, rmax)
    return kern.quantize_reference(values, scale, zp, 0, 2**N_BITS - 1)


def kernels_construction(x: np.ndarray) -> Any:
    rmin, rmax = kern.min_max(x, "x")
    kern.rounded_unique(x)
    values = x.copy()
    scale, zp = params(rmin, rmax)
    return kern.quantize(values, scale, zp, 0, 2**N_BITS - 1)


def quantized_array_class() -> Any:
    try:
        from fhequant.quantization import QuantizedArray  # type: ignore[attr-defined]
    except ImportError:
        return None
    return QuantizedArray


def bench(x: np.ndarray, repeat: int) -> dict[str, Any]:
    q_np = numpy_construction(x)
    q_k = kernels_construction(x)
    assert np.array_equal(q_np, q_k), "kernels and numpy disagree"
    scale, zp = params(*kern.min_max(x))
    out: dict[str, Any] = {
        "copy": best(x.copy, repeat),
        "numpy_construction": best(lambda: numpy_construction(x), max(2, repeat // 2)),
        "kernels_construction": best(lambda: kernels_construction(x), repeat),
        "kernels_min_max": best(lambda: kern.min_max(x), repeat),
        "kernels_copy_and_min_max": best(lambda: (x.copy(), kern.min_max(x)), repeat),
        "kernels_rounded_unique": best(lambda: kern.rounded_unique(x), repeat),
        "kernels_quantize": best(lambda: kern.quantize(x, scale, zp, 0, 255), repeat),
        "numpy_dequant": best(lambda: kern.dequantize_reference(q_k, scale, zp), repeat),
        "kernels_dequant": best(lambda: kern.dequantize(q_k, scale, zp), repeat),
    }
    copy_t, fused_t = alternating([x.copy, lambda: kern.copy_min_max(x)], repeat)
    out["copy"] = min(out["copy"], copy_t)
    out["kernels_copy_min_max"] = fused_t
    qa_cls = quantized_array_class()
    if qa_cls is not None:
        qa = qa_cls(N_BITS, x)
        # copy and construction alternated (the machine is shared), best of each
        copy_t, qa_t, qa_read_t = alternating(
            [x.copy, lambda: qa_cls(N_BITS, x), lambda: qa_cls(N_BITS, x).qvalues], repeat
        )
        out["copy"] = min(out["copy"], copy_t)
        out["qa_construction"] = qa_t
        out["qa_construction_and_qvalues"] = qa_read_t
        out["qa_dequant"] = best(qa.dequant, repeat)
    copy = out["copy"]
    ratios = {
        "numpy_over_kernels_construction": out["numpy_construction"] / out["kernels_construction"],
        "kernels_construction_over_copy": out["kernels_construction"] / copy,
        "kernels_dequant_over_copy": out["kernels_dequant"] / copy,
        "kernels_copy_min_max_over_copy": out["kernels_copy_min_max"] / copy,
        "kernels_copy_and_min_max_over_copy": out["kernels_copy_and_min_max"] / copy,
        "numpy_dequant_over_kernels_dequant": out["numpy_dequant"] / out["kernels_dequant"],
    }
    if qa_cls is not None:
        ratios["numpy_over_qa_construction"] = out["numpy_construction"] / out["qa_construction"]
        ratios["qa_construction_over_copy"] = out["qa_construction"] / copy
        ratios["qa_construction_and_qvalues_over_copy"] = out["qa_construction_and_qvalues"] / copy
        ratios["qa_dequant_over_copy"] = out["qa_dequant"] / copy
    out["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x64 = rng.normal(size=args.size)
    x32 = x64.astype(np.float32)
    report: dict[str, Any] = {
        "bench": "quantizers",
        "size": args.size,
        "n_bits": N_BITS,
        "quantized_array": quantized_array_class() is not None,
        "targets": {
            "numpy_over_construction": ">= 3",
            "construction_over_copy": "<= 2",
            "dequant_over_copy": "<= 1.5",
        },
        "float64": bench(x64, args.repeat),
        "float32": bench(x32, args.repeat),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
