"""Normalizations over an axis of one encrypted tensor: Softmax and LayerNormalization
(docs/contract.md §3.9).

These ops combine several elements of their input through a non-linear function, so they
cannot be one table lookup: they are written as integer differences, table lookups and sums
on the executor, and end with one float table lookup quantized by the output quantizer.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from fhequant.errors import QuantizedOpError
from fhequant.quantization import QuantizationOptions, QuantizedArray
from fhequant.quantized.ops.base import QuantizedMixingOp

__all__ = ["QuantizedLayerNormalization", "QuantizedSoftmax"]


def _exp_table(scale: float, unit: int, cap: int, diff: Any) -> Any:
    """round(unit · min(exp(scale · d), cap)) for the integer differences d."""
    with np.errstate(over="ignore"):
        terms = np.minimum(np.exp(scale * np.asarray(diff, dtype=np.float64)), float(cap))
    return np.round(unit * terms).astype(np.int64)


def _unit_over(unit: int, sums: Any) -> Any:
    """unit / S as float64 (S ≥ unit for every reachable sum; the table's other entries
    stay finite)."""
    return unit / np.maximum(np.asarray(sums, dtype=np.float64), 1.0)


class QuantizedSoftmax(QuantizedMixingOp):
    """Softmax over one non-batch axis, from the integers of its input (docs/contract.md §3.9).

    softmax(x)_i = 1 / Σ_j exp(x_j - x_i). With q the input integers and s_x its scale, the
    differences d_ij = q_j - q_i are exact integers (the zero point cancels); one table maps
    each to e_ij = round(K · min(exp(s_x · d_ij), C)); their integer sum S_i = Σ_j e_ij is at
    least K (the j = i term); the output is K / S_i, quantized by the output quantizer in one
    table lookup. K = C = 2^k with k = n_bits (the output's bits): a term above C means an
    output below 2^-n_bits, which quantizes to the bottom of the range anyway. S then needs
    about 2k + log2(n) bits; with ``rounding_threshold_bits`` T, k is lowered to
    max(1, (T - ceil(log2 n)) // 2) so that S fits in T bits (coarser terms instead of a
    rounded sum, whose low bits carry the largest outputs).
    """

    _impl_for_op_named = "Softmax"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        axis = self.attrs.get("axis", -1)
        if not isinstance(axis, (int, np.integer)):
            raise QuantizedOpError(f"{self._label()}: axis must be an integer, got {axis!r}")
        if int(axis) == 0:
            raise QuantizedOpError(
                f"{self._label()}: a softmax over axis 0 (the batch axis) is not supported"
            )

    def can_fuse(self) -> bool:
        """Softmax mixes the elements of an axis: never fusable."""
        return False

    def _unit_and_cap(self, n: int) -> tuple[int, int]:
        k = int(self.n_bits)
        if self.rounding_threshold_bits is not None:
            budget = int(self.rounding_threshold_bits["n_bits"])
            k = min(k, max(1, (budget - int(np.ceil(np.log2(max(n, 2))))) // 2))
        return 2**k, 2**k

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Integer differences along the axis, an exp table, a sum, then K / S.

        Args:
            *q_inputs: the encrypted input.
            calibrate_rounding: unused (Softmax does not round: see the class).
            **attrs: unused.

        Returns:
            The QuantizedArray of the softmax.
        """
        (q_x,) = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        if not isinstance(q_x, QuantizedArray):
            raise QuantizedOpError(f"{self._label()}: needs an encrypted input")
        self._track("prepared_inputs", [q_x])
        scale = np.asarray(q_x.quantizer.scale)
        if scale.size != 1:
            raise QuantizedOpError(
                f"{self._label()}: the input scale must be a scalar, got shape {scale.shape}"
            )
        x = q_x.qvalues
        ndim = len(x.shape)
        axis = int(self.attrs.get("axis", -1)) % ndim
        if axis == 0:
            raise QuantizedOpError(
                f"{self._label()}: a softmax over axis 0 (the batch axis) is not supported"
            )
        perm = [a for a in range(ndim) if a != axis] + [axis]
        moved = x if axis == ndim - 1 else np.transpose(x, perm)
        shape = tuple(int(d) for d in moved.shape)
        n = shape[-1]
        ex = self.executor(x)
        # d[..., i, j] = q_j - q_i
        diff = ex.subtract(moved.reshape((*shape[:-1], 1, n)), moved.reshape((*shape, 1)))
        unit, cap = self._unit_and_cap(n)
        table = partial(_exp_table, float(scale.reshape(())), unit, cap)

        def softmax_exp(d: Any) -> Any:
            return table(d)

        terms = ex.tlu(diff, softmax_exp)
        sums = ex.sum(terms, -1)
        self._track("accumulator", sums)
        if axis != ndim - 1:
            sums = np.transpose(sums, list(np.argsort(perm)))

        def softmax_reciprocal(s: Any) -> Any:
            return _unit_over(unit, s)

        return self.make_output_quant_array(ex.float_function(softmax_reciprocal, sums))


def _centered_ints(zero_point: int, fields: tuple[Any, Any, Any], c_int: Any) -> Any:
    """The integers of the centered values c = c_int · s_x / n, minus their zero point."""
    scale_over_n, opts, (stats, params) = fields
    values = np.asarray(c_int, dtype=np.float64) * scale_over_n
    qa = QuantizedArray(opts.n_bits, values, options=opts, stats=stats, params=params)
    return np.asarray(qa.qvalues, dtype=np.int64) - zero_point


class QuantizedLayerNormalization(QuantizedMixingOp):
    """LayerNormalization (opset 17) over the axes from ``axis`` to the last, from the
    integers of its input (docs/contract.md §3.9).

    With q the input integers, s_x its scale and n the number of normalized elements:
    c_int = n·q - Σq (exact; the zero point cancels) is centered·n/s_x; one table quantizes
    the centered values c = c_int·s_x/n with the op's calibrated centered quantizer (minus its
    zero point: k_c), another gives k_c² from the same integers; V = Σ k_c² is the variance in
    units of s_c²/n; one table quantizes 1/sqrt(V·s_c²/n + eps) with the calibrated inverse
    standard deviation quantizer (minus its zero point: k_r); the product k_c·k_r (encrypted x
    encrypted) times s_c·s_r·scale + bias is quantized by the output quantizer in one table.
    With ``rounding_threshold_bits``, c_int (``centered``) and V (``variance``) are rounded
    before their tables. Only the first output (Y) is supported.
    """

    _impl_for_op_named = "LayerNormalization"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        axis = self.attrs.get("axis", -1)
        if not isinstance(axis, (int, np.integer)) or int(axis) == 0:
            raise QuantizedOpError(
                f"{self._label()}: axis must be a non-batch axis (not 0), got {axis!r}"
            )
        self.centered_quant_stats: Any = None
        self.centered_quant_params: Any = None
        self.inv_std_quant_stats: Any = None
        self.inv_std_quant_params: Any = None

    def can_fuse(self) -> bool:
        """LayerNormalization mixes the elements of its axes: never fusable."""
        return False

    def call_impl(self, *inputs: Any, **attrs: Any) -> Any:
        """The float implementation's first output (Y; Mean and InvStdDev are not kept)."""
        out = self.spec().impl(*inputs, **attrs)
        return out[0] if isinstance(out, tuple) else out

    def _axes(self, ndim: int) -> tuple[int, ...]:
        axis = int(self.attrs.get("axis", -1))
        first = axis + ndim if axis < 0 else axis
        if first <= 0 or first >= ndim:
            raise QuantizedOpError(
                f"{self._label()}: axis {axis} of a {ndim}-dimensional input is the batch axis "
                "or out of range"
            )
        return tuple(range(first, ndim))

    def _internal_opts(self, signed: bool) -> QuantizationOptions:
        return QuantizationOptions(self.n_bits, is_signed=signed)

    def calibrate(self, *inputs: Any) -> Any:
        """The output quantizer from the float Y; the centered and inverse-std quantizers from
        the float intermediates of the same inputs.

        Args:
            *inputs: the variable inputs (floats).

        Returns:
            The float Y.
        """
        prepared = self._prepare_inputs_with_constants(
            *inputs, calibrate=True, quantize_actual_values=False
        )
        x = np.asarray(prepared[0], dtype=np.float64)
        axes = self._axes(x.ndim)
        eps = float(self.attrs.get("epsilon", 1e-5))
        centered = x - np.mean(x, axis=axes, keepdims=True)
        inv_std = 1.0 / np.sqrt(np.mean(centered * centered, axis=axes, keepdims=True) + eps)
        qc = QuantizedArray(self.n_bits, centered, options=self._internal_opts(True))
        qr = QuantizedArray(self.n_bits, inv_std, options=self._internal_opts(False))
        self.centered_quant_stats = qc.quantizer.quant_stats
        self.centered_quant_params = qc.quantizer.quant_params
        self.inv_std_quant_stats = qr.quantizer.quant_stats
        self.inv_std_quant_params = qr.quantizer.quant_params
        raw = self.call_impl(*prepared, **self.attrs)
        self._set_output_quantizer(raw)
        return raw

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Centered integers, their squares summed, an inverse-std table, their product.

        Args:
            *q_inputs: the encrypted input.
            calibrate_rounding: update lsbs_to_remove from this batch.
            **attrs: unused.

        Returns:
            The QuantizedArray of Y.
        """
        prepared = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        q_x = prepared[0]
        if not isinstance(q_x, QuantizedArray):
            raise QuantizedOpError(f"{self._label()}: needs an encrypted input")
        if self.centered_quant_params is None or self.inv_std_quant_params is None:
            self._check_calibrated()
            raise QuantizedOpError(f"{self._label()}: calibrate the op before running it")
        self._track("prepared_inputs", [q_x])
        s_x = np.asarray(q_x.quantizer.scale, dtype=np.float64)
        if s_x.size != 1:
            raise QuantizedOpError(
                f"{self._label()}: the input scale must be a scalar, got shape {s_x.shape}"
            )
        x = q_x.qvalues
        axes = self._axes(len(x.shape))
        n = int(np.prod([int(x.shape[a]) for a in axes]))
        ex = self.executor(x)
        total = ex.sum(x, axes, keepdims=True)
        c_int = ex.subtract(ex.multiply_constant(np.int64(n), x), total)
        c_int = self.cnp_round(c_int, calibrate_rounding, "centered")
        copts, ropts = self._internal_opts(True), self._internal_opts(False)
        c_params, r_params = self.centered_quant_params, self.inv_std_quant_params
        z_c, z_r = int(np.asarray(c_params.zero_point)), int(np.asarray(r_params.zero_point))
        s_c, s_r = float(np.asarray(c_params.scale)), float(np.asarray(r_params.scale))
        fields = (float(s_x.reshape(())) / n, copts, (self.centered_quant_stats, c_params))

        def layernorm_centered(ci: Any) -> Any:
            return _centered_ints(z_c, fields, ci)

        def layernorm_squared(ci: Any) -> Any:
            k = _centered_ints(z_c, fields, ci)
            return k * k

        k_c = ex.tlu(c_int, layernorm_centered)
        variance = ex.sum(ex.tlu(c_int, layernorm_squared), axes, keepdims=True)
        variance = self.cnp_round(variance, calibrate_rounding, "variance")
        self._track("accumulator", variance)
        eps = float(self.attrs.get("epsilon", 1e-5))
        r_stats = self.inv_std_quant_stats

        def layernorm_inv_std(v: Any) -> Any:
            var = np.maximum(np.asarray(v, dtype=np.float64), 0.0) * (s_c * s_c / n)
            qa = QuantizedArray(
                ropts.n_bits, 1.0 / np.sqrt(var + eps), options=ropts, stats=r_stats,
                params=r_params,
            )  # fmt: skip
            return np.asarray(qa.qvalues, dtype=np.int64) - z_r

        k_r = ex.tlu(variance, layernorm_inv_std)
        product = ex.multiply(k_c, k_r)
        scale = np.asarray(_plain(prepared[1]), dtype=np.float64)
        bias = None if len(prepared) < 3 or prepared[2] is None else _plain(prepared[2])
        unit = s_c * s_r

        def layernorm_affine(p: Any) -> Any:
            y = np.asarray(p, dtype=np.float64) * unit * scale
            return y if bias is None else y + np.asarray(bias, dtype=np.float64)

        return self.make_output_quant_array(ex.float_function(layernorm_affine, product))


def _plain(v: Any) -> Any:
    return v.values if isinstance(v, QuantizedArray) else v
