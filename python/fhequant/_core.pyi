"""Type stubs of the compiled module ``fhequant._core`` (checked by mypy.stubtest)."""

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "_raise_kernel_error",
    # --- float kernels (ptq-module) ---
    "matmul_f32_sequential",
    # --- end float kernels ---
]
__version__: str

def _raise_kernel_error(variant: str, context: str | None = None) -> None: ...

# --- float kernels (ptq-module) ---
def matmul_f32_sequential(
    a: npt.NDArray[np.float32],
    b: npt.NDArray[np.float32],
    context: str | None = None,
) -> npt.NDArray[np.float32]: ...

# --- end float kernels ---
