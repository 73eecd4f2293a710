"""TorchUniformQuantizer: the UniformQuantizer formulas on torch tensors (docs/contract.md §1.4).

torch is imported lazily, inside the methods, so fhequant imports without it.
"""

from __future__ import annotations

from typing import Any

from fhequant.quantization.quantizer import UniformQuantizer

__all__ = ["TorchUniformQuantizer"]


class TorchUniformQuantizer:
    """Quantize/dequantize torch tensors with the parameters of a UniformQuantizer.

    Rounding is ``torch.round`` (half to even), the clip range is the quantizer's.
    """

    def __init__(self, quantizer: UniformQuantizer) -> None:
        """Wrap ``quantizer`` (not copied: later changes to it are seen).

        Args:
            quantizer: a calibrated UniformQuantizer.
        """
        self._np_quantizer = quantizer

    @property
    def quantizer(self) -> UniformQuantizer:
        """The wrapped numpy quantizer."""
        return self._np_quantizer

    def __getattr__(self, name: str) -> Any:
        # scale, zero_point, offset, n_bits, ... come from the wrapped quantizer.
        if name == "_np_quantizer":
            raise AttributeError(name)
        return getattr(self._np_quantizer, name)

    def quant(self, values: Any, dtype: Any = None) -> Any:
        """torch.round(values / scale + zero_point), clipped unless no_clipping, cast.

        Args:
            values: a float torch tensor.
            dtype: optional torch dtype of the result.

        Returns:
            The quantized tensor.
        """
        import torch

        quantizer = self._np_quantizer
        qvalues = torch.round(values / quantizer.scale + quantizer.zero_point)
        if not quantizer.no_clipping:
            lo, hi = quantizer.clip_bounds()
            qvalues = torch.clamp(qvalues, lo, hi)
        if dtype is not None:
            qvalues = qvalues.type(dtype)
        return qvalues

    def dequant(self, qvalues: Any) -> Any:
        """scale · (qvalues - zero_point), with the zero point cast to qvalues' dtype.

        Args:
            qvalues: a torch tensor of quantized values.

        Returns:
            The dequantized tensor.
        """
        import torch

        quantizer = self._np_quantizer
        zero_point = torch.as_tensor(quantizer.zero_point).type(qvalues.dtype)
        return quantizer.scale * (qvalues - zero_point)
