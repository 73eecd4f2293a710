"""A hand-written integer MLP in the style of the quantized ops (test fixture for fhequant.fhe).

Each layer is ``q @ W`` with the weight zero-point correction (``Executor.matmul``), an
optional ``round_bit_pattern`` and a ``tlu`` doing rescale + bias + ReLU + requantize; the
last layer returns its raw accumulator. The module has the QuantizedModule surface the FHE
code needs (input names, ``quant_layers_dict``, ``quantize_input``, ``quantized_forward``,
``dequantize_output``), so compile/simulate/execute and the bit-width analysis run on it
without the PTQ stack.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from fhequant.quantized.exec import executor_for, run_op


def _bits(lo: int, hi: int) -> int:
    def one(v: int) -> int:
        if v == 0:
            return 1
        if v < 0:
            return int(np.ceil(np.log2(-v))) + 1
        return int(np.ceil(np.log2(v + 1)))

    b = max(one(lo), one(hi))
    return b + 1 if lo < 0 and hi > 0 and one(hi) >= b else b


class StandinDense:
    """One integer dense layer: acc = q @ W - z_w·Σq, rounded, then a rescale TLU."""

    is_mixing = True

    def __init__(
        self,
        name: str,
        w: np.ndarray,
        bias: np.ndarray,
        n_bits: int,
        z_w: int,
        produces_graph_output: bool,
    ) -> None:
        self.op_instance_name = name
        self.n_bits = n_bits
        self.s_w = float(np.abs(w).max()) / (2 ** (n_bits - 1) - 1)
        self.z_w = int(z_w)
        self.w_q = (np.rint(w / self.s_w) + z_w).astype(np.int64)
        self.bias = bias.astype(np.float64)
        self.produces_graph_output = produces_graph_output
        self.lsbs = 0
        self.rounding_threshold_bits: dict[str, Any] | None = None
        self.s_out = 1.0
        self.z_out = 0
        self.s_in = 1.0
        self.z_in = 0

    def accumulate(self, q: Any) -> Any:
        ex = executor_for(q)
        acc = ex.matmul(q, self.w_q, self.z_w)
        return ex.round_bit_pattern(acc, self.lsbs)

    def rescale(self, acc: Any) -> Any:
        """Accumulator -> float pre-activation (zero points of x and w corrected)."""
        p = self.w_q.shape[0]
        sum_w = self.z_in * self.w_q.sum(axis=0)
        final = p * self.z_in * self.z_w
        return (acc + final - sum_w) * (self.s_in * self.s_w) + self.bias

    def requant(self, acc: Any) -> Any:
        v = np.maximum(self.rescale(acc.astype(np.float64)), 0.0)
        q = np.rint(v / self.s_out + self.z_out)
        return np.clip(q, 0, 2**self.n_bits - 1).astype(np.int64)

    def q_impl(self, q: Any) -> Any:
        acc = self.accumulate(q)
        if self.produces_graph_output:
            return acc
        return executor_for(acc).tlu(acc, self.requant)

    def calibrate(self, q: np.ndarray, threshold: int | None) -> np.ndarray:
        """Fix the rounding and the output quantizer from a clear batch; return the output."""
        self.lsbs = 0
        acc = self.accumulate(q)
        if threshold is not None and not self.produces_graph_output:
            self.lsbs = max(0, _bits(int(acc.min()), int(acc.max())) - threshold)
            self.rounding_threshold_bits = {"n_bits": threshold}
            acc = self.accumulate(q)
        if self.produces_graph_output:
            return acc
        v = np.maximum(self.rescale(acc.astype(np.float64)), 0.0)
        self.s_out = max(float(v.max()), 1e-6) / (2**self.n_bits - 1)
        self.z_out = 0
        return self.requant(acc)


class StandinMLP:
    """An integer MLP with the QuantizedModule surface used by fhequant.fhe."""

    def __init__(
        self,
        sizes: list[int],
        n_bits: int = 4,
        threshold: int | None = None,
        z_w: int = 2,
        seed: int = 0,
        input_name: str = "x.0",
    ) -> None:
        rng = np.random.default_rng(seed)
        self.ordered_module_input_names = [input_name]
        self.n_bits = n_bits
        self.threshold = threshold
        self.layers: list[StandinDense] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            w = rng.normal(size=(a, b)) / np.sqrt(a)
            bias = rng.normal(size=(b,)) * 0.1
            last = i == len(sizes) - 2
            self.layers.append(StandinDense(f"dense_{i}", w, bias, n_bits, z_w, last))
        self.quant_layers_dict = {
            layer.op_instance_name: ([input_name], layer) for layer in self.layers
        }

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Floats in [0, 1] -> n-bit unsigned integers."""
        q = np.rint(np.clip(x, 0.0, 1.0) * (2**self.n_bits - 1))
        return q.astype(np.int64)

    def input_range(self) -> tuple[int, int]:
        """The integer range of the input quantizer."""
        return 0, 2**self.n_bits - 1

    def calibrate(self, x: np.ndarray) -> None:
        q = self.quantize_input(x)
        s_in, z_in = 1.0 / (2**self.n_bits - 1), 0
        for layer in self.layers:
            layer.s_in, layer.z_in = s_in, z_in
            q = layer.calibrate(q, self.threshold)
            s_in, z_in = layer.s_out, layer.z_out

    def quantized_forward(self, q: Any) -> Any:
        for layer in self.layers:
            q = run_op(layer.op_instance_name, layer, q)
        return q

    def dequantize_output(self, acc: np.ndarray) -> np.ndarray:
        last = self.layers[-1]
        return last.rescale(np.asarray(acc, dtype=np.float64))

    def ops(self) -> list[tuple[str, Any]]:
        return [(name, op) for name, (_, op) in self.quant_layers_dict.items()]


def make_standin(
    sizes: list[int], n_bits: int = 4, threshold: int | None = None, n: int = 40, seed: int = 0
) -> tuple[StandinMLP, np.ndarray]:
    """A calibrated stand-in MLP and its calibration data (floats in [0, 1])."""
    rng = np.random.default_rng(seed + 1)
    x = rng.uniform(0.0, 1.0, size=(n, sizes[0]))
    model = StandinMLP(sizes, n_bits=n_bits, threshold=threshold, seed=seed)
    model.calibrate(x)
    return model, x
