"""Type stubs of the compiled module ``fhequant._core`` (checked by mypy.stubtest)."""

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "__version__",
    "_raise_kernel_error",
    # --- quantization kernels (kernels::quant) ---
    "dequantize",
    "min_max",
    "quantize",
    "rounded_unique",
    # --- end quantization kernels ---
]
__version__: str

def _raise_kernel_error(variant: str, context: str | None = None) -> None: ...

# --- quantization kernels (kernels::quant); called by fhequant.quantization._kernels ---
def quantize(
    values: NDArray[Any],
    scale: float,
    zero_point: float,
    lo: float | None,
    hi: float | None,
    div_f64: bool,
    add_f64: bool,
    clip_f64: bool,
    out_dtype: str,
) -> NDArray[Any]: ...
def dequantize(q: NDArray[Any], scale: float, zero_point: float) -> NDArray[np.float64]: ...
def min_max(values: NDArray[Any], name: str = "values") -> tuple[float, float, bool, bool]: ...
def rounded_unique(values: NDArray[Any]) -> NDArray[Any] | None: ...

# --- end quantization kernels ---
