"""Gemm, MatMul and Conv with zero-point correction (docs/contract.md §3.1, §3.2).

With x = s_x(q_x - z_x) and w = s_w(q_w - z_w), Jacob et al. 2018 (Eq. 7):

    Σ_k x_k w_k = s_x s_w [Σ q_x q_w - z_w Σ q_x - z_x Σ q_w + p z_x z_w]

The integer part Σ q_x q_w - z_w Σ q_x is the accumulator (it depends on encrypted data);
z_x Σ q_w ("sum_w") and p z_x z_w ("final") are constants, applied in float64 after the
optional rounding. p is the true inner dimension (after transB) [FIX a].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeGuard

import numpy as np

from fhequant import kernels as ik
from fhequant.errors import QuantizedOpError
from fhequant.quantization import QuantizedArray
from fhequant.quantized.exec import is_tracer
from fhequant.quantized.float_impls import conv_float, gemm_float, matmul_float
from fhequant.quantized.ops.base import ExtremesLayout
from fhequant.quantized.ops.mixing import QuantizedMixingOp

__all__ = ["QuantizedConv", "QuantizedGemm", "QuantizedMatMul"]


def _quantized_in_kernel(
    op: Any, ex: Any, kernel: Callable[[tuple[Any, ...]], Any]
) -> QuantizedArray | None:
    """The op's output quantized inside its fused kernel (``kernel(quant)`` with the output
    quantizer's (scale, zero_point, lo, hi)), or None when the executor ``ex`` does not
    quantize outputs, the quantizer does not clip, or the kernel does not apply."""
    if not ex.quantizes_outputs:
        return None
    op._check_calibrated()
    opts, stats, params = op._get_output_quant_opts(), op.output_quant_stats, op.output_quant_params
    quantizer = QuantizedArray(op.n_bits, None, options=opts, stats=stats, params=params).quantizer
    if quantizer.no_clipping:
        return None
    found = kernel((quantizer.scale, quantizer.zero_point, *quantizer.clip_bounds()))
    if found is None:
        return None
    return QuantizedArray.from_narrow(op.n_bits, *found, options=opts, stats=stats, params=params)


def _gemm_input(q_x: QuantizedArray, trans_a: Any, *, narrow: bool) -> Any:
    """The input integers, transposed by ``transA``: with ``narrow``, int8/int16 when ``q_x``
    holds them so (:meth:`QuantizedArray.narrow_qvalues`, the same numbers), else ``qvalues``
    (int64)."""
    a = q_x.narrow_qvalues() if narrow else q_x.qvalues
    return np.swapaxes(a, -1, -2) if trans_a else a


def _conv_input(q_x: QuantizedArray, is_1d: bool, *, narrow: bool) -> Any:
    """The conv input integers (narrow as in :func:`_gemm_input`), in the 2-D form of a 1-D
    conv."""
    x = q_x.narrow_qvalues() if narrow else q_x.qvalues
    return x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if is_1d else x


def _values(v: Any) -> Any:
    return v.values if isinstance(v, QuantizedArray) else v


def _bias_shift(bias: Any, divisor: Any) -> Any:
    """``bias / divisor`` (the bias part of a graph output's zero point) with numpy's dtypes;
    a float32 bias that overflows there (a bias near 3e38 over a small scale) is divided in
    float64 instead, so the output stays finite where the float model is (docs/contract.md
    §1.7)."""
    with np.errstate(over="ignore"):
        shift = bias / divisor
    if not np.all(np.isfinite(shift)) and np.all(np.isfinite(bias)):
        shift = np.asarray(bias, dtype=np.float64) / divisor
    return shift


def _qvalues(v: Any) -> Any:
    return v.qvalues if isinstance(v, QuantizedArray) else v


def _check_bias_scale(op: QuantizedMixingOp, q_bias: QuantizedArray, m: Any) -> None:
    s_b = q_bias.quantizer.scale
    if not np.all(np.isclose(s_b, m)):
        raise QuantizedOpError(
            f"{op._label()}: the QAT bias scale {s_b!r} differs from input scale x weight "
            f"scale {m!r}; quantize the bias with scale s_x·s_w"
        )


def _gemm_weight_layout(value: Any, rank: int, trans_b: Any) -> Any:
    """A weight scale or zero point laid out like the (transposed) weights: a
    per-output-channel value of torch's (O, 1) Linear layout becomes (1, O) under transB (a
    scalar stays a scalar)."""
    if np.ndim(value) == 0:
        return value
    value = np.asarray(value).reshape((1,) * (rank - np.ndim(value)) + np.shape(value))
    return np.swapaxes(value, -1, -2) if trans_b else value


def _gemm_weight_scale(q_w: QuantizedArray, rank: int, trans_b: Any) -> Any:
    """The weight scale laid out like the (transposed) weights."""
    return _gemm_weight_layout(q_w.quantizer.scale, rank, trans_b)


def _centred_weights(op: QuantizedMixingOp, q: Any, z_w: Any) -> tuple[Any, Any]:
    """(weight integers, zero point) for the integer matmul / conv: a scalar zero point is
    kept (the kernels subtract it); per-channel zero points (asymmetric per-channel
    weights, already in ``q``'s layout) are subtracted from the constant integers here, so
    the accumulator is Σ q_x (q_w - z_w) with z_w = 0: the same integers, and worst-case
    bounds taken on the centred weights."""
    if np.ndim(z_w) == 0:
        return q, z_w
    z = np.asarray(z_w)
    if not np.all(np.asarray(z, dtype=np.float64) == np.rint(np.asarray(z, dtype=np.float64))):
        raise QuantizedOpError(
            f"{op._label()}: per-channel weight zero points must be integers, got {z!r}"
        )
    return np.asarray(q, dtype=np.int64) - z.astype(np.int64), 0


def _conv_weight_scale(q_w: QuantizedArray, layout: tuple[int, ...]) -> Any:
    """The weight scale in the accumulator's layout: a per-output-channel (O, 1, 1, 1) scale
    becomes (1, O, 1, 1) (a scalar stays a scalar)."""
    s_w = q_w.quantizer.scale
    if np.size(s_w) <= 1:
        return s_w
    return np.asarray(s_w).reshape(layout)


def _is_qat_bias(q_bias: Any) -> TypeGuard[QuantizedArray]:
    return isinstance(q_bias, QuantizedArray) and bool(q_bias.quantizer.is_precomputed_qat)


class QuantizedGemm(QuantizedMixingOp):
    """Y = op(A) @ op(B) + C with alpha == 1 and beta ∈ {0, 1} (docs/contract.md §3.1)."""

    _impl_for_op_named = "Gemm"
    # annotated as on QuantizedOp: QuantizedMatMul overrides them
    split_independent_impl: ClassVar[Callable[..., Any] | None] = staticmethod(gemm_float)
    fused_extremes: ClassVar[ExtremesLayout | None] = "gemm"
    requant_table_if_constant = (1,)
    narrow_inputs = True
    pow2_accumulator_shift = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        alpha = self.attrs.get("alpha", 1.0)
        beta = self.attrs.get("beta", 1.0)
        if alpha != 1:
            raise QuantizedOpError(
                f"{self._label()}: alpha={alpha} is not supported; only alpha == 1 is"
            )
        if beta not in (0, 1):
            raise QuantizedOpError(
                f"{self._label()}: beta={beta} is not supported; only beta 0 or 1 is"
            )
        weights = self.constant_inputs.get(1)
        if weights is not None:
            rank = np.ndim(_values(weights))
            if rank not in (2, 3):
                raise QuantizedOpError(
                    f"{self._label()}: weights of rank {rank} are not supported; use rank 2 or 3"
                )

    def q_impl(
        self,
        *q_inputs: Any,
        calibrate_rounding: bool = False,
        accumulator: Any = None,
        **attrs: Any,
    ) -> Any:
        """Integer matmul with zero-point correction, then rescale (docs/contract.md §3.1).

        Args:
            *q_inputs: the encrypted input (and the weights when they are encrypted).
            calibrate_rounding: update lsbs_to_remove from this batch.
            accumulator: the product ``a @ (b - z_w)`` of exactly the integers this call
                reads (:meth:`integer_weights`), already computed (calibration keeps it from
                the statistics pass); only the fused output quantization uses it, every other
                path computes the product.
            **attrs: attribute overrides.

        Returns:
            A QuantizedArray: at a graph output the raw accumulator with params
            (s_x s_w, out_zp, 0), else the calibrated output quantization of the floats.
        """
        attrs = self._merged_attrs(attrs)
        prepared = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        self._track("prepared_inputs", prepared)
        q_x, q_w = prepared[0], prepared[1]
        q_bias = prepared[2] if len(prepared) > 2 and attrs.get("beta", 1) != 0 else None
        trans_a = attrs.get("transA", 0)
        b = q_w.qvalues
        if attrs.get("transB", 0):
            b = np.swapaxes(b, -1, -2)
        if 1 not in self.constant_inputs:
            a = _gemm_input(q_x, trans_a, narrow=False)
            return self._encrypted_gemm(a, b, q_x, q_w, q_bias, calibrate_rounding)

        z_x = q_x.quantizer.zero_point
        b, z_w = self.integer_weights(q_w, attrs)
        m = q_x.quantizer.scale * _gemm_weight_scale(q_w, b.ndim, attrs.get("transB", 0))
        p = b.shape[-2]
        # int8/int16 when q_x holds them narrow: the native kernels read them as they are, an
        # executor that computes in numpy widens its operands (``backend.operand``)
        a = _gemm_input(q_x, trans_a, narrow=True)
        ex = self.executor(a)
        sum_w = z_x * np.sum(b, axis=-2, keepdims=True)
        final = p * z_x * z_w
        qat_bias = _is_qat_bias(q_bias)
        if not self.produces_graph_output and not qat_bias and self._fusable(calibrate_rounding):
            # the steps below in one executor call (no accumulator to track or calibrate)
            bias = None if q_bias is None else _values(q_bias)
            lsbs, exactness = self._rounding("matmul")
            vectors = (final, sum_w, m, bias)
            quant = _quantized_in_kernel(
                self,
                ex,
                lambda q: (
                    ex.matmul_rescale_quant(a, b, z_w, lsbs, vectors, q)
                    if accumulator is None
                    else ex.accumulator_rescale_quant(accumulator, lsbs, vectors, q)
                ),
            )
            if quant is not None:
                return quant
            v = ex.matmul_rescale(a, b, z_w, lsbs, exactness, final, sum_w, m, bias)
            return self.make_output_quant_array(v, owned=type(v) is np.ndarray)
        acc = ex.matmul(a, b, z_w)
        if self.produces_graph_output:
            self._track("accumulator", acc)
            out_zp = sum_w - final
            if q_bias is not None:
                out_zp = out_zp + _bias_shift(_values(q_bias), -m)
            owned = type(acc) is np.ndarray and self._value_tracker() is None
            return self.make_raw_accumulator_array(acc, m, out_zp, owned=owned)

        if _is_qat_bias(q_bias):
            _check_bias_scale(self, q_bias, m)
            acc = ex.add_constant(acc, q_bias.qvalues)
        acc = self.cnp_round(acc, calibrate_rounding, "matmul")
        self._track("accumulator", acc)
        v = acc.astype(np.float64)
        owned = type(v) is np.ndarray
        v = _apply(np.add, v, final, v, owned)
        v = _apply(np.subtract, v, sum_w, v, owned)
        v = _apply(np.multiply, m, v, v, owned)
        if q_bias is not None and not qat_bias:
            v = _apply(np.add, v, _values(q_bias), v, owned)
        return self.make_output_quant_array(v, owned=owned)

    def integer_weights(self, q_w: QuantizedArray, attrs: dict[str, Any]) -> tuple[Any, Any]:
        """(weight integers, zero point) of the integer product with constant weights
        ``q_w``, laid out (K, N) as the product reads them (transB applied, per-channel zero
        points folded in: :func:`_centred_weights`)."""
        trans_b = attrs.get("transB", 0)
        b = q_w.qvalues
        if trans_b:
            b = np.swapaxes(b, -1, -2)
        z_w = _gemm_weight_layout(q_w.quantizer.zero_point, b.ndim, trans_b)
        return _centred_weights(self, b, z_w)

    def _encrypted_gemm(
        self,
        a: Any,
        b: Any,
        q_x: QuantizedArray,
        q_w: QuantizedArray,
        q_bias: Any,
        calibrate_rounding: bool,
    ) -> QuantizedArray:
        """Encrypted x encrypted: products as ⌊(x+y)²/4⌋ - ⌊(x-y)²/4⌋ (docs/contract.md §3.1)."""
        z_x = q_x.quantizer.zero_point
        z_w = q_w.quantizer.zero_point
        m = q_x.quantizer.scale * q_w.quantizer.scale
        p = b.shape[-2]
        ex = self.executor(a, b)
        x = a.reshape((*a.shape, 1))
        y = b.reshape((*b.shape[:-2], 1, *b.shape[-2:]))
        add = self.cnp_round(ex.add(x, y), calibrate_rounding, "add")
        sub = self.cnp_round(ex.subtract(x, y), calibrate_rounding, "sub")
        prod = ex.subtract(ex.tlu(add, _quarter_square), ex.tlu(sub, _quarter_square))
        acc = ex.sum(ex.copy(prod), axis=-2)
        if z_w != 0:
            acc = ex.subtract(acc, ex.multiply_constant(z_w, ex.sum(a, -1, keepdims=True)))
        sum_w = ex.multiply_constant(z_x, ex.sum(b, -2, keepdims=True))
        final = p * z_x * z_w
        acc = ex.subtract(ex.add_constant(acc, final), sum_w)
        acc = self.cnp_round(acc, calibrate_rounding, "matmul")
        self._track("accumulator", acc)
        v = m * acc.astype(np.float64)
        if q_bias is not None:
            v = v + _values(q_bias)
        return self.make_output_quant_array(v)


def _apply(ufunc: Any, first: Any, second: Any, v: Any, owned: bool) -> Any:
    """``ufunc(first, second)`` where one operand is ``v``: in place in ``v`` when it is a
    fresh ndarray and the result keeps its dtype and shape (the same loop, the same bits)."""
    if owned:
        other = second if first is v else first
        try:
            fits = np.result_type(first, second) == v.dtype and (
                np.broadcast_shapes(v.shape, np.shape(other)) == v.shape
            )
        except (TypeError, ValueError):
            fits = False
        if fits:
            return ufunc(first, second, out=v)
    return ufunc(first, second)


def _quarter_square(v: Any) -> Any:
    return (v.astype(np.float64) ** 2 / 4.0).astype(np.int64)


class QuantizedMatMul(QuantizedGemm):
    """A @ B: a Gemm without transposes or bias."""

    _impl_for_op_named = "MatMul"
    split_independent_impl = staticmethod(matmul_float)
    fused_extremes = "matmul"


class QuantizedConv(QuantizedMixingOp):
    """1-D or 2-D convolution, dilation 1, padded with the input zero point
    (docs/contract.md §3.2)."""

    _impl_for_op_named = "Conv"
    split_independent_impl = staticmethod(conv_float)
    fused_extremes = "conv"
    requant_table_if_constant = (1,)
    narrow_inputs = True
    pow2_accumulator_shift = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        dil = self.attrs.get("dilations")
        if dil is not None and any(int(d) != 1 for d in dil):
            raise QuantizedOpError(
                f"{self._label()}: dilations={list(dil)} are not supported; use dilation 1"
            )
        if self.attrs.get("auto_pad", "NOTSET") != "NOTSET":
            raise QuantizedOpError(
                f"{self._label()}: auto_pad={self.attrs['auto_pad']!r} is not supported; "
                "give explicit pads (auto_pad NOTSET)"
            )
        weights = self.constant_inputs.get(1)
        if weights is not None and np.ndim(_values(weights)) not in (3, 4):
            raise QuantizedOpError(
                f"{self._label()}: weights of rank {np.ndim(_values(weights))} are not "
                "supported; only 1-D and 2-D convolutions are"
            )
        if weights is None:
            raise QuantizedOpError(
                f"{self._label()}: the weights must be a constant input; encrypted weights are "
                "not supported"
            )

    def _spatial_rank(self) -> int | None:
        """The weights' spatial axes (their rank minus 2), when they are known."""
        weights = self.constant_inputs.get(1)
        return None if weights is None else max(int(np.ndim(_values(weights))) - 2, 1)

    def _geometry(self, ndim_kernel: int) -> tuple[list[int], list[int]]:
        strides = self.attrs.get("strides") or [1] * ndim_kernel
        pads = self.attrs.get("pads") or [0] * (2 * ndim_kernel)
        if ndim_kernel == 1:
            return [1, int(strides[0])], [0, int(pads[0]), 0, int(pads[1])]
        return [int(s) for s in strides], [int(v) for v in pads]

    def q_impl(self, *q_inputs: Any, calibrate_rounding: bool = False, **attrs: Any) -> Any:
        """Integer conv with zero-point correction, then rescale (docs/contract.md §3.2).

        Args:
            *q_inputs: the encrypted input.
            calibrate_rounding: update lsbs_to_remove from this batch.
            **attrs: attribute overrides.

        Returns:
            A QuantizedArray: at a graph output the raw accumulator with params
            (s_x s_w, zp array, 0), else the calibrated output quantization of the floats.
        """
        prepared = self._prepare_inputs_with_constants(
            *q_inputs, calibrate=False, quantize_actual_values=True
        )
        self._track("prepared_inputs", prepared)
        q_x, q_w = prepared[0], prepared[1]
        q_bias = prepared[2] if len(prepared) > 2 else None
        z_x = q_x.quantizer.zero_point
        z_w = q_w.quantizer.zero_point
        if np.ndim(z_x) != 0:
            raise QuantizedOpError(
                f"{self._label()}: the input zero point must be a scalar, got an array of "
                f"shape {np.shape(z_x)}; re-quantize the input"
            )
        w = np.asarray(q_w.qvalues)
        if np.ndim(z_w) != 0:  # per output channel: (O, 1, ...) like the scale
            w, z_w = _centred_weights(self, w, np.reshape(z_w, (w.shape[0],) + (1,) * (w.ndim - 1)))
        elif float(z_w) != int(z_w):
            raise QuantizedOpError(
                f"{self._label()}: the weight zero point must be an integer, got {z_w!r}"
            )
        is_1d = w.ndim == 3
        # int8/int16 when q_x holds them narrow: only the fused kernel reads them so
        x = _conv_input(q_x, is_1d, narrow=True)
        strides, pads = self._geometry(w.ndim - 2)
        if is_1d:
            w = w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])
        n_out = w.shape[0]
        ex = self.executor(x)
        conv_args: dict[str, Any] = {
            "strides": strides,
            "pads": pads,
            "pad_value": int(z_x),
            "group": int(self.attrs.get("group", 1)),
            "z_w": int(z_w),
        }
        final = int(np.prod(w.shape[1:])) * z_x * z_w
        qat_bias = _is_qat_bias(q_bias)
        # one fused executor call when there is no accumulator to track or calibrate; a
        # traced graph keeps its separate nodes and 1-D shapes
        fused = not (self.produces_graph_output or qat_bias or is_tracer(x)) and (
            self._fusable(calibrate_rounding)
        )
        # per-channel constants in the accumulator's layout: (1, O, 1) for a 1-D conv on the
        # step-by-step path (its accumulator goes back to 1-D before rounding), else
        # (1, O, 1, 1) (the fused output is reshaped at the end)
        layout = (1, n_out, 1) if is_1d and not fused else (1, n_out, 1, 1)
        sum_w = z_x * np.sum(w, axis=(1, 2, 3)).reshape(layout)
        m = q_x.quantizer.scale * _conv_weight_scale(q_w, layout)
        bias = None if q_bias is None else np.asarray(_values(q_bias)).reshape(layout)
        if fused:
            lsbs, exactness = self._rounding("matmul")
            quant = None
            if not is_1d:
                quant = _quantized_in_kernel(
                    self,
                    ex,
                    lambda q: ex.conv_rescale_quant(
                        x, w, conv_args, lsbs, (final, sum_w, m, bias), q
                    ),
                )
            if quant is not None:
                return quant
            x = _conv_input(q_x, is_1d, narrow=False)
            v = ex.conv_rescale(
                x, w, **conv_args, lsbs=lsbs, exactness=exactness,
                offset=final, sub=sum_w, mul=m, add=bias,
            )  # fmt: skip
            if is_1d:
                v = v.reshape(v.shape[0], v.shape[1], v.shape[3])
            return self.make_output_quant_array(v, owned=type(v) is np.ndarray)
        acc = ex.conv(_conv_input(q_x, is_1d, narrow=False), w, **conv_args)
        if is_1d:
            acc = acc.reshape(acc.shape[0], acc.shape[1], acc.shape[3])

        if self.produces_graph_output:
            self._track("accumulator", acc)
            zp = sum_w - final
            if bias is not None:
                zp = zp + _bias_shift(bias, -m)
            return self.make_raw_accumulator_array(acc, m, zp)

        if _is_qat_bias(q_bias):
            _check_bias_scale(self, q_bias, m)
            acc = ex.add_constant(acc, np.asarray(q_bias.qvalues).reshape(layout))
        acc = self.cnp_round(acc, calibrate_rounding, "matmul")
        self._track("accumulator", acc)
        v = ik.float64_rescale(acc, final, sum_w, m, None if qat_bias else bias)
        return self.make_output_quant_array(v)
