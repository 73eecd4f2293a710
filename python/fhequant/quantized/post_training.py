"""The PTQ classes of Concrete ML's documented flow, on fhequant's calibration walk.

Concrete ML quantizes a ``NumpyModule`` with::

    converter = PostTrainingAffineQuantization(n_bits, numpy_model, rounding_threshold_bits)
    quantized_module = converter.quantize_module(*calibration_data)

The same calls work here. ``quantize_module`` runs :func:`fhequant.quantized.build_quantized_module`
(the streamed calibration walk of docs/contract.md §4, with its batch-size invariance), so a
converter gives exactly the module ``build_quantized_module`` gives for the same arguments.
``PostTrainingQATImporter`` is the QAT import (``import_qat=True``, docs/contract.md §4.5).

The walk's own per-mode strategy objects are :class:`fhequant.quantized.strategies.PTQStrategy`
and :class:`~fhequant.quantized.strategies.QATImportStrategy`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from fhequant.errors import GraphInputError
from fhequant.onnx import NumpyModule
from fhequant.quantized.build import build_quantized_module
from fhequant.quantized.module import QuantizedModule
from fhequant.quantized.n_bits import resolve_n_bits
from fhequant.quantized.ops.rounding import normalize_rounding_threshold_bits, rounding_per_op

__all__ = ["ONNXConverter", "PostTrainingAffineQuantization", "PostTrainingQATImporter"]


class ONNXConverter:
    """Quantize a NumpyModule's ONNX graph into a QuantizedModule.

    Args:
        n_bits: an int or a dict with op_inputs / op_weights (model_inputs / model_outputs
            optional), docs/contract.md §4.1.
        numpy_model: the fhequant.onnx.NumpyModule to quantize.
        rounding_threshold_bits: None, an int or {"n_bits": k, "method": ...} for every mixing
            op (docs/contract.md §2.4).
    """

    #: Whether the converter imports a QAT model (set by the subclasses).
    import_qat: ClassVar[bool] = False

    def __init__(
        self,
        n_bits: int | dict[str, int],
        numpy_model: NumpyModule,
        rounding_threshold_bits: Any = None,
    ) -> None:
        if not isinstance(numpy_model, NumpyModule):
            raise GraphInputError(
                f"{type(self).__name__}: numpy_model must be a fhequant.onnx.NumpyModule, got a "
                f"{type(numpy_model).__name__}; build one with NumpyModule(model, dummy_input)"
            )
        self._n_bits_arg = n_bits
        self.n_bits: dict[str, int] = resolve_n_bits(n_bits).as_dict()
        self.numpy_model = numpy_model
        # validated now (a typed error names the value), kept as given for the walk
        if rounding_per_op(rounding_threshold_bits) is None:
            normalize_rounding_threshold_bits(rounding_threshold_bits, type(self).__name__)
        self.rounding_threshold_bits = rounding_threshold_bits

    @property
    def n_bits_model_inputs(self) -> int:
        """Bits of the module's input quantizers."""
        return self.n_bits["model_inputs"]

    @property
    def n_bits_model_outputs(self) -> int:
        """Bits of the ops' output quantizers."""
        return self.n_bits["model_outputs"]

    @property
    def n_bits_op_weights(self) -> int:
        """Bits of the quantized constants."""
        return self.n_bits["op_weights"]

    @property
    def n_bits_op_inputs(self) -> int:
        """Bits the ops re-quantize their inputs to."""
        return self.n_bits["op_inputs"]

    def quantize_module(self, *calibration_data: Any, keep_onnx: bool = True) -> QuantizedModule:
        """Calibrate the model on ``calibration_data`` (one array per graph input).

        Args:
            *calibration_data: the calibration arrays (or tensors), one per input.
            keep_onnx: keep the ONNX model on the module.

        Returns:
            The calibrated QuantizedModule.

        Raises:
            GraphInputError: no calibration data, or not one array per input.
        """
        expected = len(self.numpy_model.graph_input_names)
        if len(calibration_data) != expected:
            raise GraphInputError(
                f"{type(self).__name__}.quantize_module: got {len(calibration_data)} "
                f"calibration array(s) for a model with {expected} input(s) "
                f"{list(self.numpy_model.graph_input_names)}"
            )
        data = calibration_data[0] if len(calibration_data) == 1 else tuple(calibration_data)
        return build_quantized_module(
            self.numpy_model,
            data,
            import_qat=self.import_qat,
            n_bits=self._n_bits_arg,
            rounding_threshold_bits=self.rounding_threshold_bits,
            keep_onnx=keep_onnx,
        )


class PostTrainingAffineQuantization(ONNXConverter):
    """Post-training quantization: per-tensor min/max, asymmetric (docs/contract.md §4.2).

    Args:
        n_bits: as for ONNXConverter.
        numpy_model: as for ONNXConverter.
        rounding_threshold_bits: as for ONNXConverter.
        is_signed: accepted for compatibility with Concrete ML; as there, a constant's sign
            comes from its distribution (docs/contract.md §4.3) and an input's from its data.
    """

    def __init__(
        self,
        n_bits: int | dict[str, int],
        numpy_model: NumpyModule,
        rounding_threshold_bits: Any = None,
        is_signed: bool = False,
    ) -> None:
        super().__init__(n_bits, numpy_model, rounding_threshold_bits)
        self.is_signed = bool(is_signed)


class PostTrainingQATImporter(ONNXConverter):
    """Import a QAT model (Brevitas/QONNX ``Quant`` nodes), docs/contract.md §4.5."""

    import_qat: ClassVar[bool] = True
