"""Scale-out on Dask: distributed calibration and batch inference (``pip install fhequant[dask]``).

* Calibration: ``build_quantized_module`` (and the ``compile_*`` front doors through it) take
  a ``dask.array.Array``, a Dask DataFrame of feature columns or a tuple of arrays as
  calibration data, and calibrate on the active ``distributed.Client`` (or the one given with
  :class:`DaskData`), each pass a map over the partitions with a reduce of mergeable partial
  statistics; the module is bit-identical to the local calibration of the same rows
  (:mod:`fhequant.distributed.calibration`).
* Inference: ``QuantizedModule.forward(x, fhe=...)`` on a Dask array (or ``DaskData(x,
  client=...)``), and :func:`forward` on a Dask or numpy array, map row blocks over the
  workers with ``fhe="disable" | "simulate" | "execute"`` and return the numpy output in row
  order (:mod:`fhequant.distributed.inference`).

Dask is imported only when one of these runs; this package is the front-door layer.
"""

from __future__ import annotations

from fhequant.distributed._dask import DaskData
from fhequant.distributed.calibration import DaskCalibrationEngine
from fhequant.distributed.inference import DaskInferenceEngine, ShippingReport, forward
from fhequant.quantized.build import register_calibration_engine
from fhequant.quantized.engines import register_inference_engine

__all__ = ["DaskData", "ShippingReport", "forward"]

register_calibration_engine(DaskCalibrationEngine())
register_inference_engine(DaskInferenceEngine())
