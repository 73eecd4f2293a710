"""The calibration walk: from an ONNX graph and calibration data to a QuantizedModule
(docs/contract.md §4).

:func:`quantize_module` walks the graph in ONNX order. Constants and initializers go through
the strategy's ``process_initializer`` (§4.3), constant-only nodes are folded, and every other
node becomes a quantized op that is calibrated on the *fake-quantized* outputs of its
producers (§4.2): ``op.calibrate`` on the float data sets the output quantizer, then
``op.q_impl`` (rounding calibration for mixing ops) gives the values that flow downstream.

Two strategies share the walk (composition, not mixins): :class:`PTQStrategy`
(PTQ: signed-from-data asymmetric input options, dequantized values flow downstream) and
:class:`QATImportStrategy` (QAT: QAT input options, the raw float output flows).

Streaming (docs/contract.md decision 4). The data is cut into blocks of ``block_rows`` rows anchored
at row 0 (:mod:`fhequant.quantized.streaming`), whatever the batch sizes of the source, and each op
is calibrated block by block with its producers' final parameters:

* statistics pass: the float op on every block; global min/max merged exactly, then the output
  quantizer is set from them (the same numbers as QA(n_bits, whole tensor));
* rounding passes (mixing ops with rounding_threshold_bits): each rounding point (``cnp_round``
  id) is calibrated on the global [min, max] of its accumulator, one id per pass in call order,
  earlier ids already rounding with their final ``lsbs_to_remove`` (a ``RoundingRangeObserver``
  of the executor gathers the range: nothing is patched on the op);
* output pass: ``q_impl`` on every block; the quantized output is kept (compactly, spilled to
  disk beyond a memory budget) for the consumers, then freed.

With a single block this is exactly the whole-set walk of the reference: ``op.calibrate`` and
``op.q_impl(..., calibrate_rounding=True)`` on all rows at once. Ops whose calibration is not a
min/max reduction (Div's divider, Brevitas Quant, ...) are calibrated on the concatenation of
their inputs over all blocks, which is exact but holds that op's inputs in memory. BatchNorm's
percentile clip is streamed exactly from bounded tails (:mod:`fhequant.quantized.percentile`).

The modules, by responsibility:

* :mod:`.walk`: the graph walk and its entry (:func:`quantize_module`, :class:`ModuleCalibrator`);
* :mod:`.store`: the walk's tensors and their stored blocks (:class:`~.store.WalkStore`);
* :mod:`.views`: tensors read through a table from another one's stored integers
  (:class:`~.views.TableView`);
* :mod:`.passes`: the passes that calibrate one op (statistics, streamed, whole, concatenated);
* :mod:`.tables`: the integer-table shortcuts (element-wise ops, re-quantized inputs);
* :mod:`.early` and :mod:`.ahead`: statistics gathered in another op's pass (while the
  inputs load; during the producer's output pass, on a guess checked before use);
* :mod:`.traits`: what the walk asks of an op's class;
* :mod:`.engine`: the public interface other calibration engines (``fhequant.distributed``)
  run the walk through (pass plan, mergeable output ranges, block hand-off);
* :mod:`.pow2`: the QAT power-of-two pass on a finished module (§4.7).
"""

from __future__ import annotations

from fhequant.quantized.calibration.pow2 import apply_power_of_two_scaling
from fhequant.quantized.calibration.walk import ModuleCalibrator, quantize_module
from fhequant.quantized.strategies import (
    PTQStrategy,
    QATImportStrategy,
    QuantizationStrategy,
    process_initializer_ptq,
    process_initializer_qat,
)

__all__ = [
    "ModuleCalibrator",
    "PTQStrategy",
    "QATImportStrategy",
    "QuantizationStrategy",
    "apply_power_of_two_scaling",
    "process_initializer_ptq",
    "process_initializer_qat",
    "quantize_module",
]
