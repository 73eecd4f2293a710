"""PTQ and QAT-import strategies: what differs between the two walks (docs/contract.md §4.2, §4.3).

The calibration walk (:mod:`fhequant.quantized.calibration`) is shared; a strategy object
decides the input options of each op, how constants are quantized, and whether the raw float
output (QAT import) or the dequantized output (PTQ) flows downstream.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhequant.errors import DTypeError
from fhequant.quantization import (
    STABILITY_CONST,
    QuantizationOptions,
    QuantizedArray,
    StatisticSpec,
    UniformQuantizationParameters,
)
from fhequant.quantized.n_bits import BitWidths

__all__ = [
    "PTQStrategy",
    "QATImportStrategy",
    "QuantizationStrategy",
    "per_channel_weights",
    "process_initializer_ptq",
    "process_initializer_qat",
    "process_weights_ptq",
]


# --- initializers (docs/contract.md §4.3) ---------------------------------------------------------


def process_initializer_ptq(n_bits: int, values: Any) -> Any:
    """Quantize a PTQ constant: ints stay raw, bools at 1 bit, floats per tensor.

    A float tensor is symmetric (and signed) iff its 3rd and 97th percentiles straddle 0 with
    a ratio |v3/v97| in [1/3, 3] (0 when |v97| < 0.001).

    Args:
        n_bits: op_weights.
        values: the constant.

    Returns:
        The raw integer array, or a QuantizedArray.
    """
    values = np.asarray(values)
    if values.dtype == np.bool_:
        return QuantizedArray(1, values.astype(np.float64))
    if not np.issubdtype(values.dtype, np.floating):
        return values
    # one partition for both: the values of two calls (a zero may come with the other sign,
    # which none of the tests below can see: |v97| < 0.001 guards the division)
    v3, v97 = np.percentile(values, [3, 97])
    ratio = 0 if np.abs(v97) < 0.001 else np.abs(v3 / v97)
    same_sign = (v3 > 0 and v97 > 0) or (v3 < 0 and v97 < 0)
    symmetric = not (same_sign or ratio < 1 / 3 or ratio > 3)
    return QuantizedArray(n_bits, values, is_signed=symmetric, is_symmetric=symmetric)


def per_channel_weights(
    n_bits: int,
    weights: np.ndarray,
    method: StatisticSpec,
    axis: int,
    asymmetric: bool = False,
) -> QuantizedArray:
    """Per-output-channel weights (along ``axis``), from the range ``[lo_o, hi_o]``
    ``method`` chooses for channel ``o``'s values:

    * symmetric: scale ``max(|lo_o|, |hi_o|) / (2^(n-1) - 1)``, zero point 0, signed;
    * asymmetric: unsigned, the range widened to hold 0, scale ``(hi_o - lo_o) / (2^n - 1)``
      and zero point ``rint(-lo_o / scale)`` (in [0, 2^n - 1]; a channel of zeros: scale 1,
      zero point 0).

    The scale (and zero point) have the weights' rank with size 1 off ``axis``, the layout
    the linear ops rescale with (docs/contract.md §3.1, §3.2)."""
    options = QuantizationOptions(n_bits, is_signed=not asymmetric, is_symmetric=not asymmetric)
    moved = np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)
    ranges = method.row_ranges(moved, options).astype(np.float64)  # one search, all channels
    shape = [1] * weights.ndim
    shape[axis] = weights.shape[axis]
    if asymmetric:
        lo, hi = np.minimum(ranges[:, 0], 0.0), np.maximum(ranges[:, 1], 0.0)
        delta = hi - lo
        wide = delta >= STABILITY_CONST
        scale = np.where(wide, delta / (2**n_bits - 1), 1.0)
        numerator = -lo * (2**n_bits - 1)
        zero_point = np.where(wide, np.rint(numerator / np.where(wide, delta, 1.0)), 0.0)
        params = UniformQuantizationParameters(
            scale=scale.reshape(shape),
            zero_point=zero_point.astype(np.int64).reshape(shape),
            offset=0,
        )
    else:
        amax = np.maximum(np.abs(ranges[:, 0]), np.abs(ranges[:, 1]))
        levels = 2 ** (n_bits - 1) - 1
        scale = np.where(amax > 0, amax / levels, 1.0)
        params = UniformQuantizationParameters(
            scale=scale.reshape(shape), zero_point=0, offset=2 ** (n_bits - 1)
        )
    return QuantizedArray(
        n_bits,
        weights,
        options=options,
        params=params,
        rmin=float(weights.min()),
        rmax=float(weights.max()),
    )


def process_weights_ptq(
    n_bits: int,
    values: Any,
    method: StatisticSpec,
    channel_axis: int | None = None,
    asymmetric: bool = False,
) -> Any:
    """Quantize PTQ weights with the range a calibration statistic chooses.

    Per tensor (``channel_axis`` None), the sign and symmetry are those of
    :func:`process_initializer_ptq`; ``method`` sees all the weights at once and its
    ``finalize`` gets the weight quantizer's options. Per channel, see
    :func:`per_channel_weights`.

    Args:
        n_bits: op_weights.
        values: the weights (floats; anything else goes to process_initializer_ptq).
        method: the statistic.
        channel_axis: the output-channel axis for per-channel weights.
        asymmetric: per-channel zero points as well as scales.

    Returns:
        The QuantizedArray (values outside the range are clipped by the quantizer).
    """
    plain = process_initializer_ptq(n_bits, values)
    if not isinstance(plain, QuantizedArray) or plain.values is None:
        return plain
    weights = np.asarray(values)
    if weights.dtype == np.bool_ or weights.size == 0:
        return plain
    if channel_axis is not None and n_bits >= 2:
        return per_channel_weights(n_bits, weights, method, channel_axis, asymmetric)
    options = plain.quantizer.quant_options
    stat = method.make(weights.size)
    stat.update(weights)
    lo, hi = stat.finalize(options)
    return QuantizedArray(n_bits, weights, options=options, rmin=lo, rmax=hi)


def process_initializer_qat(n_bits: int, values: Any, name: str = "initializer") -> Any:
    """Quantize a QAT constant: ints stay raw, floats as signed QAT (zp 0).

    Args:
        n_bits: op_weights.
        values: the constant.
        name: the initializer name, for errors.

    Returns:
        The raw integer array, or a QuantizedArray.
    """
    if isinstance(values, QuantizedArray):
        return values
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.integer):
        return values
    if not np.issubdtype(values.dtype, np.floating):
        raise DTypeError(
            f"QAT import: initializer {name!r} has dtype {values.dtype}; QAT constants must be "
            "floats (or integers, which stay raw)"
        )
    return QuantizedArray(n_bits, values, is_signed=True, is_qat=True)


# --- strategies ------------------------------------------------------------------------------


class QuantizationStrategy:
    """What differs between PTQ and QAT import; the walk itself is shared."""

    #: True when the raw float output of each op flows downstream (QAT import).
    flows_raw: bool = False
    name = "strategy"

    def __init__(self, bits: BitWidths) -> None:
        self.bits = bits

    def input_quant_opts(self, n_bits: int, signed: bool) -> QuantizationOptions:
        """Options an op quantizes its variable inputs with."""
        raise NotImplementedError

    def process_initializer(self, values: Any, name: str) -> Any:
        """Quantize (or keep raw) a constant input that the op quantizes."""
        raise NotImplementedError

    def process_weights(
        self,
        values: Any,
        name: str,
        method: StatisticSpec,
        channel_axis: int | None = None,
        asymmetric: bool = False,
    ) -> Any:
        """Quantize the weights of a Gemm/MatMul/Conv with the range ``method`` chooses
        (per output channel along ``channel_axis`` when given, with per-channel zero points
        when ``asymmetric``)."""
        raise NotImplementedError


class PTQStrategy(QuantizationStrategy):
    """PTQ: per-tensor min/max, asymmetric inputs signed from the data (docs/contract.md §4.2)."""

    name = "PTQ"

    def input_quant_opts(self, n_bits: int, signed: bool) -> QuantizationOptions:
        """QuantizationOptions(n_bits, is_signed=signed): asymmetric, not QAT."""
        return QuantizationOptions(n_bits, is_signed=signed)

    def process_initializer(self, values: Any, name: str) -> Any:
        """docs/contract.md §4.3, PTQ."""
        if isinstance(values, QuantizedArray):
            return values
        return process_initializer_ptq(self.bits.op_weights, values)

    def process_weights(
        self,
        values: Any,
        name: str,
        method: StatisticSpec,
        channel_axis: int | None = None,
        asymmetric: bool = False,
    ) -> Any:
        """process_initializer with the weight range of ``method``."""
        if isinstance(values, QuantizedArray):
            return values
        return process_weights_ptq(self.bits.op_weights, values, method, channel_axis, asymmetric)


class QATImportStrategy(QuantizationStrategy):
    """QAT import: QAT input options; the raw float outputs flow downstream (docs/contract.md §4.2
    step 6)."""

    flows_raw = True
    name = "QAT"

    def input_quant_opts(self, n_bits: int, signed: bool) -> QuantizationOptions:
        """QuantizationOptions(n_bits, is_signed=True, is_qat=True)."""
        return QuantizationOptions(n_bits, is_signed=True, is_qat=True)

    def process_initializer(self, values: Any, name: str) -> Any:
        """docs/contract.md §4.3, QAT."""
        return process_initializer_qat(self.bits.op_weights, values, name)
