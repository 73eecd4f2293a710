"""fhequant: quantize floating-point models into integer-only models and run them under FHE.

The package is layered; a module imports only from its own layer or the layers below it,
at top level and inside functions alike (``tests/api/test_layers.py`` checks both the imports
written in the code and what importing each layer loads):

0. shared base: ``errors``, ``serialization``, the native core ``_core`` and ``_concrete``
   (loading concrete-python);
1. ``kernels``: the integer and quantization kernels, dispatched to ``_core``, with their
   numpy twins in ``kernels.reference`` (the executable specification);
2. ``quantization``: the quantizers (options, statistics, parameters, ``QuantizedArray``);
3. ``onnx``: ONNX import (and torch export to ONNX), the float graph ``NumpyModule``;
4. ``quantized``: the quantized ops, the calibration walk, ``QuantizedModule``,
   ``build_quantized_module``;
5. ``fhe``: compilation, bit widths, simulation and execution with concrete-python;
6. front doors: ``torch`` (``compile_torch_model``, ``compile_onnx_model``,
   ``compile_brevitas_qat_model``), ``deployment`` (the client / server split and the
   inference server), this package's namespace, and the command line
   (``__main__``, ``fhe.demo``) and the pytest plugin (``pytest_plugin``).

Where a lower layer needs behaviour from a higher one, the higher layer registers it when it
is imported: ``fhequant.fhe`` registers the FHE operations of ``QuantizedModule`` (``compile``,
``bitwidth_report``, ``forward(fhe="simulate"|"execute")``), and ``fhequant.quantized``
publishes its ops in ``fhequant.quantization``. This module imports both, so they are in
place whatever ``fhequant`` module a user imports first. Optional third-party packages
(torch, concrete-python, brevitas) are imported only when a feature needs them.
"""

from __future__ import annotations

from fhequant import deployment, distributed, errors, fhe, serialization
from fhequant._concrete import preserve_exit_status
from fhequant._core import __version__
from fhequant.fhe.tune import TuneResult, tune
from fhequant.quantization import (
    STABILITY_CONST,
    MinMaxQuantizationStats,
    QuantizationOptions,
    QuantizedArray,
    TorchUniformQuantizer,
    UniformQuantizationParameters,
    UniformQuantizer,
    fill_from_kwargs,
)
from fhequant.quantized import QuantizedModule, build_quantized_module
from fhequant.torch.brevitas import compile_brevitas_qat_model
from fhequant.torch.compile import compile_onnx_model, compile_torch_model

__all__ = [
    "STABILITY_CONST",
    "MinMaxQuantizationStats",
    "QuantizationOptions",
    "QuantizedArray",
    "QuantizedModule",
    "TorchUniformQuantizer",
    "TuneResult",
    "UniformQuantizationParameters",
    "UniformQuantizer",
    "__version__",
    "build_quantized_module",
    "compile_brevitas_qat_model",
    "compile_onnx_model",
    "compile_torch_model",
    "deployment",
    "distributed",
    "errors",
    "fhe",
    "fill_from_kwargs",
    "preserve_exit_status",
    "serialization",
    "tune",
]
