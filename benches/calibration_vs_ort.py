"""Calibration throughput against ONNX Runtime's calibrator and torch's float forward
(prints ONE JSON object; issue 16).

Every row is measured in the same run, on the same model and the same rows, min of N runs:

* ``fhequant``: ``build_quantized_module`` (default settings, the reference's integers);
* ``ort``: ``onnxruntime.quantization.quantize_static`` (MinMax, QDQ, int8) with a
  ``CalibrationDataReader`` over the same batches (model and output in a temporary directory);
* ``torch_float``: torch's float forward of the same network (``torch.inference_mode``) over
  the same rows, in memory as one tensor or batch by batch for the streamed rows.

Rows:

* ``mlp_100k_in_memory``: MLP 64-128-128-10, 100k rows as one array, 6 bits;
* ``cnn_10k_in_memory``: the CNN of ``benches/ptq.py`` (1x8x8), 10k rows, 5 bits;
* ``mlp_1m_streamed`` / ``mlp_10m_streamed``: the MLP at 6 bits on 1M / 10M rows streamed from
  a re-iterable of 10k-row batches, each batch regenerated from its seed on every read (so a
  pass over the source costs what generating it costs: ``source_pass_s``).

``summation_order`` measures what the reference's sequential float sums cost in the statistics
pass (the native extremes kernels against numpy's BLAS product and min/max on the same blocks).

``spill_cost`` calibrates the 1M streamed rows in child processes with the 32 MiB floor of
``memory_budget`` (blocks spilled to disk), with the default one chosen from the machine's
memory (``streaming.auto_memory_budget``) and with a budget that holds every block (nothing
spilled), and reports each one's time, peak RSS and the bytes spilled.

With ``--isolate`` every timed run of every contender happens in a fresh child process (the
same seeded rows), after one warm-up run in that process (none for the 10M row): a contender
then never runs next to another library's heap or thread pools. In one shared process
fhequant's streamed runs measured 1.5-2x slower than in their own (1M rows: 3.2-4.5 s against
2.15 s), ONNX Runtime's did not (1.8-2.1 s against 1.8 s); the cause was not pinned down
(docs/calibration-throughput.md, eighth round).
The rounds still alternate the contenders.

``source_reads`` counts how many times each calibrator iterated the re-iterable. The targets
are ``fhequant / ort <= 1.0`` on every row and ``fhequant / torch_float <= 1.5`` in memory.

Usage: ``python benches/calibration_vs_ort.py [--quick] [--rows-scale F] [--repeat N]
[--isolate] [--skip-10m] [--only ROWS] [--streamed-contenders fhequant,ort] [--i16-baseline]
[--exact-extremes]`` (``--quick`` divides every row count by 10; ``--rows-scale`` multiplies the
row counts; the torch float forward may be left out of the streamed rows, where the targets
compare with ONNX Runtime only; ``--i16-baseline`` adds ``fhequant_without_i16`` to the in-memory
rows: the same build with the AVX2 i16 integer-product strategy switched off, and
``i16_speedup`` = its time over fhequant's; ``--baselines NAME,...`` does the same for any
switch of :data:`SWITCHES` (``i16``, ``products``: the products kept by the statistics pass,
off by default, so time them with ``--products --baselines products``, ``filter``: the
statistics kernels' filter, ``intfilter``: the integer-product filter of the Gemms that read
stored integers, the float filter then, ``early``: the statistics gathered while the inputs
load, the first ops' own statistics pass then, ``ahead``: a consumer's statistics gathered
during its producer's output pass, its own pass then, ``concurrent``: those statistics reduced
on a native thread beside the walk, on the walk's thread then, ``recycle``: the input blocks
freed by the output pass of their last consumer, ``budget``: the memory budget chosen from the
machine's memory, the 32 MiB floor then, ``plain``: the U8I8 products of unshifted u8 x i8
operands handed to the fused epilogues as int32, the centring shift then, ``writebehind``: the
spill writes made by a helper thread, on the walk's thread then, ``direct``: spill files opened
for direct I/O, cached files then, ``readahead``: the next spilled block of a tensor read while
a pass works on one, at once then, ``monotone``: Relu's table evaluated on its input's whole
integer range, the presence marks then, ``wide``: the AVX-512 products of the float32
statistics filter, AVX2 FMA then, ``epilogue512``: the AVX-512 epilogue of the fused Gemm/Conv
with its division made of fused multiply-adds, the AVX2 epilogue then, ``blockcache``: the
walk's numpy buffers of 1 MiB and more kept for reuse, none kept then, ``screen``: the float32
screen of the Gemm epilogue, the float64 epilogue then, ``permute``: the byte-permute int8
lookups, the AVX2 byte shuffles then), on every row;
``--exact-extremes`` runs the statistics kernels without their filter).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fhequant import _core, build_quantized_module
from fhequant.kernels import memory
from fhequant.quantized import fused_stats, spill, streaming, tensor_store
from fhequant.quantized.calibration import ahead, early, passes
from fhequant.quantized.calibration import store as walk_store
from fhequant.quantized.ops.univariate import QuantizedRelu
from ptq import best_of, cnn_model, mlp_model

BATCH_ROWS = 10_000
_AUTO_MAX = streaming.AUTO_MEMORY_BUDGET_MAX


class Batches:
    """A re-iterable of ``rows`` rows of shape ``row_shape`` in batches of ``batch`` rows; every
    batch is regenerated from its seed on each iteration (nothing is kept in memory)."""

    def __init__(self, rows: int, row_shape: tuple[int, ...], batch: int = BATCH_ROWS) -> None:
        self.rows = rows
        self.row_shape = row_shape
        self.batch = batch
        self.reads = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        self.reads += 1
        for index, start in enumerate(range(0, self.rows, self.batch)):
            n = min(self.batch, self.rows - start)
            rng = np.random.default_rng(1_000_003 + index)
            yield rng.standard_normal(size=(n, *self.row_shape), dtype=np.float32)


class InMemoryBatches:
    """The batches of an in-memory array (views), for the readers that take batches."""

    def __init__(self, x: np.ndarray, batch: int = BATCH_ROWS) -> None:
        self.x = x
        self.batch = batch
        self.reads = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        self.reads += 1
        for start in range(0, self.x.shape[0], self.batch):
            yield self.x[start : start + self.batch]


# --- torch float forward --------------------------------------------------------------------


def torch_network(model: onnx.ModelProto) -> Any:
    """The torch float network of the MLP or the CNN, with the ONNX model's weights."""
    import torch

    inits = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
    }
    layers: list[Any] = []
    for node in model.graph.node:
        if node.op_type == "Gemm":
            w, b = inits[node.input[1]], inits[node.input[2]]
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data, lin.bias.data = w, b
            layers.append(lin)
        elif node.op_type == "Conv":
            w, b = inits[node.input[1]], inits[node.input[2]]
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            conv = torch.nn.Conv2d(
                w.shape[1],
                w.shape[0],
                tuple(attrs["kernel_shape"]),
                stride=tuple(attrs.get("strides", [1, 1])),
                padding=tuple(attrs.get("pads", [0, 0, 0, 0])[:2]),
            )
            conv.weight.data, conv.bias.data = w, b
            layers.append(conv)
        elif node.op_type == "Relu":
            layers.append(torch.nn.ReLU())
        elif node.op_type == "Flatten":
            layers.append(torch.nn.Flatten())
        else:
            raise ValueError(f"no torch layer for {node.op_type}")
    return torch.nn.Sequential(*layers).eval()


def torch_forward(net: Any, data: Any) -> None:
    import torch

    with torch.inference_mode():
        if isinstance(data, np.ndarray):
            net(torch.from_numpy(data))
        else:
            for batch in data:
                net(torch.from_numpy(batch))


def model_row_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """The shape of one row of the model's input."""
    dims = model.graph.input[0].type.tensor_type.shape.dim[1:]
    return tuple(int(d.dim_value) for d in dims)


# --- ONNX Runtime ---------------------------------------------------------------------------


def ort_quantize(model: onnx.ModelProto, batches: Any, workdir: str) -> None:
    """quantize_static, MinMax, QDQ, on the batches of ``batches`` (one read); the model is
    given as a file (quantize_static rewrites a ModelProto it is handed)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.it, None)
            return None if batch is None else {"x": batch}

    source = os.path.join(workdir, "float.onnx")
    if not os.path.exists(source):
        onnx.save(model, source)
    quantize_static(
        source,
        os.path.join(workdir, "q.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        calibrate_method=CalibrationMethod.MinMax,
    )


# --- rows -----------------------------------------------------------------------------------


def measure(
    name: str,
    model: onnx.ModelProto,
    data: Any,
    n_bits: int,
    repeat: int,
    workdir: str,
    contenders: tuple[str, ...] = ("fhequant", "ort", "torch_float"),
    isolate: Callable[[str], tuple[float, int]] | None = None,
) -> dict[str, Any]:
    """One row: fhequant, ORT and torch float on ``data`` (an array or a re-iterable).

    ``isolate(who)``, when given, times one run of ``who`` in a fresh child process (after a
    warm-up run there) and returns (seconds, source reads of the timed run): no contender
    shares a process, a heap or thread pools with another.
    """
    in_memory = isinstance(data, np.ndarray)
    net = None
    if isolate is None:
        net = torch_network(model)
        torch_forward(net, np.zeros((2, *model_row_shape(model)), dtype=np.float32))
    ort_source = InMemoryBatches(data) if in_memory else data
    rows = data.shape[0] if in_memory else data.rows
    times: dict[str, list[float]] = {who: [] for who in contenders}
    reads: dict[str, int] = {}
    source_pass = None
    if not in_memory:
        source_pass = best_of(lambda: sum(1 for _ in data), 1)
    # alternate the contenders run by run (the machine is shared: take minima), each round
    # in a rotated order so that no contender always follows the same one
    order = list(times)
    for r in range(repeat):
        for who in order[r % len(order) :] + order[: r % len(order)]:
            if isolate is not None:
                seconds, child_reads = isolate(who)
                times[who].append(seconds)
                if not in_memory or who == "ort":
                    reads[who] = child_reads
                continue
            before = getattr(data, "reads", 0) if not in_memory else 0
            before_ort = ort_source.reads
            start = time.perf_counter()
            run_contender(who, model, data, ort_source, n_bits, workdir, net)
            times[who].append(time.perf_counter() - start)
            if not in_memory:
                reads[who] = data.reads - before
            elif who == "ort":
                reads[who] = ort_source.reads - before_ort
    best = {who: min(t) for who, t in times.items()}
    row: dict[str, Any] = {"rows": int(rows), "n_bits": n_bits, "in_memory": in_memory}
    for who in ("fhequant", "ort", "torch_float"):
        row[f"{who}_s"] = round(best[who], 4) if who in best else None
    for who in best:
        if who.startswith("fhequant_without_"):
            switch = who.removeprefix("fhequant_without_")
            row[f"{who}_s"] = round(best[who], 4)
            row[f"{switch}_speedup"] = round(best[who] / best["fhequant"], 3)
    for who in ("ort", "torch_float"):
        ratio = best["fhequant"] / best[who] if who in best and "fhequant" in best else None
        row[f"fhequant_over_{who}"] = None if ratio is None else round(ratio, 2)
    row["fhequant_rows_per_s"] = round(rows / best["fhequant"]) if "fhequant" in best else None
    row["runs"] = repeat
    if source_pass is not None:
        row["source_pass_s"] = round(source_pass, 4)
        row["source_reads"] = reads
    print(f"# {name}: {row}", file=sys.stderr, flush=True)
    return row


def run_contender(
    who: str,
    model: onnx.ModelProto,
    data: Any,
    ort_source: Any,
    n_bits: int,
    workdir: str,
    net: Any,
) -> None:
    """One run of ``who`` (a contender of :func:`measure`) on ``data``."""
    if who == "fhequant":
        build_quantized_module(model, data, n_bits=n_bits)
    elif who.startswith("fhequant_without_"):
        switch = who.removeprefix("fhequant_without_")
        without(switch, lambda: build_quantized_module(model, data, n_bits=n_bits))
    elif who == "ort":
        ort_quantize(model, ort_source, workdir)
    else:
        torch_forward(torch_network(model) if net is None else net, data)


def child_run(row: str, who: str, scale: float, warm: bool) -> None:
    """``--child``: one timed run of ``who`` on ``row`` in this fresh process, after a warm-up
    run when ``warm``; prints ``seconds reads`` (the source reads of the timed run)."""
    model, data, n_bits = row_data(row, scale)
    in_memory = isinstance(data, np.ndarray)
    ort_source = InMemoryBatches(data) if in_memory else data
    net = torch_network(model) if who == "torch_float" else None
    with tempfile.TemporaryDirectory(prefix="fhequant-bench-child-") as workdir:
        if warm:
            run_contender(who, model, data, ort_source, n_bits, workdir, net)
        before = ort_source.reads
        start = time.perf_counter()
        run_contender(who, model, data, ort_source, n_bits, workdir, net)
        seconds = time.perf_counter() - start
    print(seconds, ort_source.reads - before)


def scaled_rows(rows: int, scale: float) -> int:
    """``rows`` times ``scale`` (``--quick``, ``--rows-scale``), at least one."""
    return max(1, int(rows * scale))


def row_data(row: str, scale: float) -> tuple[onnx.ModelProto, Any, int]:
    """The model, data and n_bits of one row (the same rows in every process: seeded)."""
    streamed = {"mlp_1m_streamed": 1_000_000, "mlp_10m_streamed": 10_000_000}
    if row in streamed:
        return mlp_model(), Batches(scaled_rows(streamed[row], scale), (64,)), 6
    rng = np.random.default_rng(3)
    # the CNN's rows are drawn after the MLP's from the same generator
    x_mlp = rng.normal(size=(scaled_rows(100_000, scale), 64)).astype(np.float32)
    if row == "mlp_100k_in_memory":
        return mlp_model(), x_mlp, 6
    x_cnn = rng.normal(size=(scaled_rows(10_000, scale), 1, 8, 8)).astype(np.float32)
    return cnn_model(), x_cnn, 5


def _module_switch(module: Any, name: str, off: Any) -> Callable[[Any], Any]:
    """A switch of a module-level flag: ``set(None)`` reads it, ``set(v)`` sets it; the value
    ``off`` is what switching it off means."""

    def flip(value: Any) -> Any:
        if value is None:
            return getattr(module, name) != off
        setattr(module, name, off if not value else not off)
        return value

    return flip


_BLOCK_CACHE_LIMIT = memory.block_cache_limit()


def _block_cache_switch(value: Any) -> Any:
    """The ``blockcache`` switch: on, the block cache keeps freed buffers up to its default
    limit; off, it keeps none (every buffer comes from numpy's default allocator)."""
    if value is None:
        return memory.block_cache_limit() > 0
    memory.block_cache_limit(_BLOCK_CACHE_LIMIT if value else 0)
    return value


def _budget_switch(value: Any) -> Any:
    """The ``budget`` switch: on, ``streaming.auto_memory_budget`` takes its share of the
    machine's memory; off, its ceiling is the 32 MiB floor (the budget before the ninth
    round)."""
    if value is None:
        return streaming.AUTO_MEMORY_BUDGET_MAX != streaming.DEFAULT_MEMORY_BUDGET
    streaming.AUTO_MEMORY_BUDGET_MAX = _AUTO_MAX if value else streaming.DEFAULT_MEMORY_BUDGET
    return value


#: What ``--baselines`` can switch off: a function taking None (read: on?) or a bool (set).
SWITCHES: dict[str, Callable[[Any], Any]] = {
    # the AVX2 i16 integer-product strategy (the f32 strategy then)
    "i16": lambda value: _core.int_i16() if value is None else _core.int_i16(value),
    # the integer products kept by the statistics pass of hidden Gemm/MatMul (off by
    # default: pass --products to time them against this baseline)
    "products": _module_switch(passes, "KEEP_PRODUCTS", False),
    # the statistics kernels' filter (exact sums everywhere)
    "filter": _module_switch(fused_stats, "EXACT_EXTREMES", True),
    # the integer-product filter of Gemm/MatMul reading stored integers (the float filter
    # then)
    "intfilter": _module_switch(fused_stats, "INTEGER_FILTER", False),
    # the statistics of the ops reading a graph input gathered while the inputs load (their
    # own statistics pass then)
    "early": _module_switch(early, "ENABLED", False),
    # a consumer's statistics gathered during its producer's output pass (its own
    # statistics pass then)
    "ahead": _module_switch(ahead, "ENABLED", False),
    # those statistics reduced on a native thread beside the walk (on the walk's thread
    # then)
    "concurrent": _module_switch(ahead, "CONCURRENT", False),
    # the input blocks freed by the output pass of their last consumer (kept until the
    # consumer is done then)
    "recycle": _module_switch(walk_store, "RECYCLE", False),
    # the unshifted U8I8 plan: int32 products handed to the fused epilogues as they are
    # (the centring shift and its row and column terms then)
    "plain": lambda value: _core.int_u8i8_plain() if value is None else _core.int_u8i8_plain(value),
    # the spill writes made by a helper thread (on the walk's thread, at once, then)
    "writebehind": _module_switch(spill, "WRITE_BEHIND", False),
    # spill files opened for direct I/O where the file system takes it (cached files then)
    "direct": _module_switch(spill, "DIRECT", False),
    # the next spilled block of a tensor read while the pass works on one (at once then)
    "readahead": _module_switch(tensor_store, "READ_SPILL_AHEAD", False),
    # the AVX-512 products of the float32 statistics filter (AVX2 FMA then)
    "wide": lambda value: (
        _core.extremes_filter_wide() if value is None else _core.extremes_filter_wide(value)
    ),
    # the AVX-512 epilogue of the fused Gemm/Conv, its division made of fused multiply-adds
    # (the AVX2 epilogue then)
    "epilogue512": lambda value: (
        _core.int_wide_epilogue() if value is None else _core.int_wide_epilogue(value)
    ),
    # the float32 screen of the Gemm's epilogue (the float64 epilogue for every group then)
    "screen": lambda value: (
        _core.int_screen_epilogue() if value is None else _core.int_screen_epilogue(value)
    ),
    # the byte-permute int8 table lookups (AVX-512 VBMI; the AVX2 byte shuffles then)
    "permute": lambda value: (
        _core.int_lookup_permute() if value is None else _core.int_lookup_permute(value)
    ),
    # Relu's table over its input's whole range (the presence marks of the integers then)
    "monotone": _module_switch(QuantizedRelu, "monotone_table", False),
    # the memory budget chosen from the machine's memory (the 32 MiB floor then)
    "budget": _budget_switch,
    # block-sized numpy buffers kept for the next block, pass and call (none kept then)
    "blockcache": _block_cache_switch,
}


def without(switch: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` with the optimisation ``switch`` (a key of :data:`SWITCHES`) off."""
    flip = SWITCHES[switch]
    on = flip(None)
    flip(False)
    try:
        return fn()
    finally:
        flip(on)


def summation_order_cost(x: np.ndarray, repeat: int) -> dict[str, Any]:
    """What the reference's sequential summation order costs in the statistics pass of the
    MLP: the native extremes kernels (sequential k-order sums, no FMA, the split-independent
    numbers) against numpy's BLAS product plus bias and min/max (any order, FMA, both
    cores), on the same 4096-row blocks. Layer 0 reads the float32 input (float32 sums);
    layers 1 and 2 read 6-bit integers dequantized to float64 (float64 sums)."""
    from fhequant import _core

    inits = {i.name: numpy_helper.to_array(i) for i in mlp_model().graph.initializer}
    block = 4096
    blocks = [x[i : i + block] for i in range(0, x.shape[0], block)]
    rng = np.random.default_rng(5)
    ints = [rng.integers(0, 64, size=(b.shape[0], 128)).astype(np.int8) for b in blocks]
    scale, zero_point = 0.05, 0.0
    result: dict[str, Any] = {}
    for layer in range(3):
        w = np.ascontiguousarray(inits[f"w{layer}"].T)
        bias = inits[f"b{layer}"]
        if layer == 0:

            def native(w: np.ndarray = w, bias: np.ndarray = bias) -> None:
                for b in blocks:
                    _core.matmul_extremes_f32(b, w, bias)

            def blas(w: np.ndarray = w, bias: np.ndarray = bias) -> None:
                for b in blocks:
                    y = b @ w + bias
                    y.min(), y.max()

        else:
            w64 = w.astype(np.float64)
            b64 = bias.astype(np.float64)

            def native(w64: np.ndarray = w64, b64: np.ndarray = b64) -> None:
                for q in ints:
                    _core.matmul_extremes_f64(q, w64, b64, scale, zero_point)

            def blas(w64: np.ndarray = w64, b64: np.ndarray = b64) -> None:
                for q in ints:
                    y = ((q - zero_point) * scale) @ w64 + b64
                    y.min(), y.max()

        def blas32(w: np.ndarray = w, bias: np.ndarray = bias, layer: int = layer) -> None:
            # float32 BLAS (what ONNX Runtime's calibrator runs), the input cast to float32
            for b, q in zip(blocks, ints, strict=True):
                inp = b if layer == 0 else (q * np.float32(scale)).astype(np.float32)
                y = inp @ w + bias
                y.min(), y.max()

        t_native, t_blas = best_of(native, repeat), best_of(blas, repeat)
        t_blas32 = best_of(blas32, repeat)
        result[f"layer{layer}"] = {
            "sequential_kernel_s": round(t_native, 4),
            "blas_same_dtype_s": round(t_blas, 4),
            "blas_float32_s": round(t_blas32, 4),
            "sequential_over_blas_same_dtype": round(t_native / t_blas, 2),
            "sequential_over_blas_float32": round(t_native / t_blas32, 2),
        }
    return result


_SPILL_CHILD = """
import resource, sys, time
sys.path.insert(0, {benches!r})
from calibration_vs_ort import Batches
from ptq import mlp_model
from fhequant.quantized.calibration.walk import quantize_module
from fhequant.quantized.streaming import normalize_calibration_data
data = Batches({rows}, (64,))
best = float("inf")
for _ in range({repeat}):
    start = time.perf_counter()
    result = quantize_module(
        mlp_model(), normalize_calibration_data(data), n_bits=6, memory_budget={budget}
    )
    best = min(best, time.perf_counter() - start)
# this process's own peak (VmHWM: ru_maxrss keeps the parent's peak across fork and exec)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
    with open("/proc/self/status") as status:
        rss = next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
print(best, rss, result.get("spilled_bytes"), data.reads // {repeat})
"""


def spill_cost(rows: int, repeat: int) -> dict[str, Any]:
    """The calibration walk (``quantize_module``) of the streamed MLP with the default memory
    budget and with one that holds everything, each in a fresh child process (peak RSS),
    alternating."""
    budgets = {
        "floor_32mib": streaming.DEFAULT_MEMORY_BUDGET,
        "auto": streaming.auto_memory_budget(),
        "unbounded": 1 << 40,
    }
    found: dict[str, list[tuple[float, int, Any, int]]] = {k: [] for k in budgets}
    benches = os.path.dirname(os.path.abspath(__file__))
    for _ in range(2):
        for key, budget in budgets.items():
            code = _SPILL_CHILD.format(benches=benches, rows=rows, repeat=repeat, budget=budget)
            out = subprocess.run(
                [sys.executable, "-c", code], check=True, capture_output=True, text=True
            ).stdout.split()
            spilled = None if out[2] == "None" else int(out[2])
            found[key].append((float(out[0]), int(out[1]), spilled, int(out[3])))
    result: dict[str, Any] = {"rows": rows}
    for key, runs in found.items():
        result[key] = {
            "fhequant_s": round(min(r[0] for r in runs), 4),
            "peak_rss_mib": round(max(r[1] for r in runs) / 2**20, 1),
            "spilled_mib": None if runs[0][2] is None else round(runs[0][2] / 2**20, 1),
            "source_reads_per_calibration": runs[0][3],
        }
    for key in ("floor_32mib", "auto"):
        result[f"{key}_over_unbounded"] = round(
            result[key]["fhequant_s"] / result["unbounded"]["fhequant_s"], 3
        )
    result["auto_budget_mib"] = round(budgets["auto"] / 2**20, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer rows")
    parser.add_argument("--rows-scale", type=float, default=1.0, help="multiply row counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (min taken)")
    parser.add_argument("--skip-10m", action="store_true", help="leave out the 10M-row run")
    parser.add_argument("--only", default=None, help="comma-separated row names to run")
    parser.add_argument(
        "--exact-extremes",
        action="store_true",
        help="statistics kernels without their filter (fused_stats.EXACT_EXTREMES), to compare",
    )
    parser.add_argument(
        "--streamed-contenders",
        default="fhequant,ort,torch_float",
        help="who runs on the streamed rows (the torch float forward is optional there)",
    )
    parser.add_argument(
        "--i16-baseline",
        action="store_true",
        help="also time fhequant with the AVX2 i16 product strategy off (in memory rows)",
    )
    parser.add_argument(
        "--products",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the integer products of hidden Gemm/MatMul (passes.KEEP_PRODUCTS, off by "
        "default; --products turns them on); with --baselines products the same run times "
        "them off too",
    )
    parser.add_argument(
        "--baselines",
        default="",
        help=f"comma-separated switches to also time off, on every row: {', '.join(SWITCHES)}",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="time every run of every contender in a fresh child process (after a warm-up "
        "run there; none for the 10M row), so that no contender shares a process, heap or "
        "thread pool with another",
    )
    parser.add_argument("--child", nargs=2, metavar=("ROW", "WHO"), help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    fused_stats.EXACT_EXTREMES = args.exact_extremes
    if args.products is not None:
        passes.KEEP_PRODUCTS = args.products
    if args.child:
        logging.getLogger().setLevel(logging.ERROR)
        child_run(args.child[0], args.child[1], args.rows_scale, args.warm)
        return
    baselines = tuple(f"fhequant_without_{b}" for b in args.baselines.split(",") if b)
    for b in baselines:
        if b.removeprefix("fhequant_without_") not in SWITCHES:
            parser.error(f"--baselines: unknown switch {b!r}; choose from {', '.join(SWITCHES)}")
    streamed = tuple(
        who
        for name in args.streamed_contenders.split(",")
        for who in ((name, *baselines) if name == "fhequant" else (name,))
    )
    in_memory = ("fhequant", *baselines, "ort", "torch_float")
    if args.i16_baseline and "fhequant_without_i16" not in baselines:
        in_memory = ("fhequant", "fhequant_without_i16", *baselines, "ort", "torch_float")
    logging.getLogger().setLevel(logging.ERROR)  # ORT's advice to pre-process the model
    scale = args.rows_scale / (10 if args.quick else 1)

    def isolated(name: str) -> Callable[[str], tuple[float, int]] | None:
        if not args.isolate:
            return None
        warm = name != "mlp_10m_streamed"  # a warm-up of 10M rows would double the run

        def run(who: str) -> tuple[float, int]:
            command = [sys.executable, os.path.abspath(__file__), "--child", name, who]
            command += ["--rows-scale", repr(scale)] + (["--warm"] if warm else [])
            command += ["--exact-extremes"] if args.exact_extremes else []
            if args.products is not None:
                command.append("--products" if args.products else "--no-products")
            out = subprocess.run(command, check=True, capture_output=True, text=True)
            seconds, reads = out.stdout.split()[-2:]
            return float(seconds), int(reads)

        return run

    names = ("mlp_100k_in_memory", "cnn_10k_in_memory", "mlp_1m_streamed", "mlp_10m_streamed")
    rows = {name: row_data(name, scale) for name in names}

    def row(name: str, repeat: int, contenders: tuple[str, ...]) -> Callable[[str], Any]:
        model, data, n_bits = rows[name]
        return lambda d: measure(name, model, data, n_bits, repeat, d, contenders, isolated(name))

    cases: dict[str, Callable[[str], dict[str, Any]]] = {
        "mlp_100k_in_memory": row("mlp_100k_in_memory", args.repeat, in_memory),
        "cnn_10k_in_memory": row("cnn_10k_in_memory", args.repeat + 2, in_memory),
        "mlp_1m_streamed": row("mlp_1m_streamed", args.repeat, streamed),
        "mlp_10m_streamed": row("mlp_10m_streamed", 1, streamed),
    }
    x_mlp = rows["mlp_100k_in_memory"][1]
    cases["summation_order"] = lambda d: summation_order_cost(x_mlp, args.repeat + 2)
    cases["spill_cost"] = lambda d: spill_cost(scaled_rows(1_000_000, scale), 1)
    if args.skip_10m:
        cases.pop("mlp_10m_streamed")
    if args.only:
        keep = set(args.only.split(","))
        cases = {k: v for k, v in cases.items() if k in keep}
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fhequant-bench-") as workdir:
        for name, case in cases.items():
            sub = os.path.join(workdir, name)
            os.makedirs(sub)
            result[name] = case(sub)
    result["targets"] = {"fhequant_over_ort": 1.0, "fhequant_over_torch_float_in_memory": 1.5}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
