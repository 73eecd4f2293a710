"""Type stubs of the compiled module ``fhequant._core`` (checked by mypy.stubtest)."""

from typing import Any, final

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

__all__ = [
    "AccExtremesStream",
    "__version__",
    "_raise_kernel_error",
    "acc_extremes_filter_counts",
    "block_cache_clear",
    "block_cache_enter",
    "block_cache_exit",
    "block_cache_limit",
    "block_cache_stats",
    "conv2d_extremes_f64",
    "conv2d_f64_sequential",
    "copy_min_max",
    "dequantize",
    "extremes_filter_counts",
    "extremes_filter_wide",
    "int_acc_rescale_quant",
    "int_bit_width",
    "int_conv2d",
    "int_conv2d_rescale",
    "int_conv2d_rescale_quant",
    "int_conv_bounds",
    "int_conv_weight_sums",
    "int_direct_conv",
    "int_gemm_bounds",
    "int_i16",
    "int_i16_conv",
    "int_lookup",
    "int_lookup_permute",
    "int_matmul",
    "int_matmul_acc_extremes",
    "int_matmul_plan",
    "int_matmul_rescale",
    "int_matmul_rescale_quant",
    "int_matmul_weight_sums",
    "int_presence",
    "int_round_bit_pattern",
    "int_screen_epilogue",
    "int_u8i8_avx2",
    "int_u8i8_plain",
    "int_vector_epilogue",
    "int_vnni",
    "int_wide_epilogue",
    "int_window_max",
    "int_window_sum",
    "matmul_extremes_f32",
    "matmul_extremes_f64",
    "matmul_f32_sequential",
    "matmul_f64_sequential",
    "min_max",
    "mse_clip_errors",
    "quantize",
    "rounded_unique",
]
__version__: str

def _raise_kernel_error(variant: str, context: str | None = None) -> None: ...

# --- quantization kernels (kernels::quant); called by fhequant.kernels.quant ----------
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
def copy_min_max(
    values: NDArray[Any], name: str = "values"
) -> tuple[NDArray[Any], float, float, bool, bool] | None: ...
def rounded_unique(values: NDArray[Any]) -> NDArray[Any] | None: ...
def mse_clip_errors(
    values: NDArray[np.float64],
    weights: NDArray[np.float64],
    scale: NDArray[np.float64],
    zero_point: NDArray[np.float64],
    qlo: float,
    qhi: float,
    prune: bool = False,
) -> NDArray[np.float64]: ...
def int_presence(q: NDArray[Any], lo: int, size: int) -> NDArray[np.bool_]: ...
def int_lookup(
    q: NDArray[Any], lo: int, table: NDArray[Any], out: NDArray[Any] | None = None
) -> NDArray[Any]: ...

# --- end quantization kernels ---
# --- float kernels (ptq-module) ---
def matmul_f32_sequential(
    a: npt.NDArray[np.float32],
    b: npt.NDArray[np.float32],
    context: str | None = None,
) -> npt.NDArray[np.float32]: ...
def matmul_f64_sequential(
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    context: str | None = None,
) -> npt.NDArray[np.float64]: ...
def conv2d_f64_sequential(
    x: npt.NDArray[np.float64],
    w: npt.NDArray[np.float64],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    begins: tuple[int, int],
    ends: tuple[int, int],
    group: int,
    context: str | None = None,
) -> npt.NDArray[np.float64]: ...
def matmul_extremes_f32(
    a: npt.NDArray[np.float32],
    b: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32] | None = None,
    context: str | None = None,
    exact: bool = False,
) -> tuple[float, float, bool]: ...
def matmul_extremes_f64(
    a: NDArray[Any],
    b: npt.NDArray[np.float64],
    bias: npt.NDArray[np.float64] | None = None,
    scale: float | None = None,
    zero_point: float | None = None,
    context: str | None = None,
    exact: bool = False,
) -> tuple[float, float, bool]: ...
def conv2d_extremes_f64(
    x: NDArray[Any],
    w: npt.NDArray[np.float64],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    begins: tuple[int, int],
    ends: tuple[int, int],
    group: int,
    bias: npt.NDArray[np.float64] | None = None,
    scale: float | None = None,
    zero_point: float | None = None,
    context: str | None = None,
    exact: bool = False,
) -> tuple[float, float, bool]: ...
def extremes_filter_counts(reset: bool = False) -> tuple[int, int, int]: ...
def extremes_filter_wide(enabled: bool | None = None) -> bool: ...
def int_matmul_acc_extremes(
    a: NDArray[Any],
    wq: npt.NDArray[np.int64],
    z_w: int,
    w: npt.NDArray[np.float64],
    bias: npt.NDArray[np.float64] | None,
    scale: float,
    zero_point: float,
    keep: bool,
    exact: bool = False,
    context: str | None = None,
) -> tuple[npt.NDArray[np.int32] | None, float, float, bool]: ...
def acc_extremes_filter_counts(reset: bool = False) -> tuple[int, int, int, int]: ...

@final
class AccExtremesStream:
    """The float extremes of a Gemm/MatMul over stored-integer blocks, reduced on a native
    thread (kernels::float::acc_stream)."""

    def __new__(
        cls,
        table: NDArray[Any] | None,
        lo: int,
        wq: npt.NDArray[np.int64],
        z_w: int,
        w: npt.NDArray[np.float64],
        bias: npt.NDArray[np.float64] | None,
        scale: float,
        zero_point: float,
        exact: bool,
        loose_survivors: float,
        pending: int,
    ) -> AccExtremesStream: ...
    def push(self, block: NDArray[Any]) -> None: ...
    def finish(
        self,
    ) -> tuple[tuple[float, float] | None, str | None, tuple[int, int, int, int]]: ...

# --- end float kernels ---
# --- integer kernels (rust-integer): see fhequant.kernels --------------------------------

_I64 = npt.NDArray[np.int64]

def int_matmul(a: NDArray[Any], w: _I64, z_w: int, context: str | None = None) -> _I64: ...
def int_matmul_rescale(
    a: NDArray[Any],
    w: _I64,
    z_w: int,
    lsbs: int,
    offset: float,
    sub: npt.NDArray[np.float64],
    mul: npt.NDArray[np.float64],
    add: npt.NDArray[np.float64] | None = None,
    context: str | None = None,
) -> npt.NDArray[np.float64]: ...
def int_matmul_rescale_quant(
    a: NDArray[Any],
    w: _I64,
    z_w: int,
    lsbs: int,
    offset: float,
    sub: npt.NDArray[np.float64],
    mul: npt.NDArray[np.float64],
    add: npt.NDArray[np.float64] | None,
    scale: float,
    zero_point: float,
    lo: float,
    hi: float,
    dtype: str,
    context: str | None = None,
) -> tuple[NDArray[Any], int, int, bool]: ...
def int_acc_rescale_quant(
    acc: npt.NDArray[np.int32],
    lsbs: int,
    offset: float,
    sub: npt.NDArray[np.float64],
    mul: npt.NDArray[np.float64],
    add: npt.NDArray[np.float64] | None,
    scale: float,
    zero_point: float,
    lo: float,
    hi: float,
    dtype: str,
    context: str | None = None,
) -> tuple[NDArray[Any], int, int, bool]: ...
def int_conv2d_rescale_quant(
    x: NDArray[Any],
    w: _I64,
    z_w: int,
    group: int,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    pad_value: int,
    lsbs: int,
    offset: float,
    sub: npt.NDArray[np.float64],
    mul: npt.NDArray[np.float64],
    add: npt.NDArray[np.float64] | None,
    scale: float,
    zero_point: float,
    lo: float,
    hi: float,
    dtype: str,
    context: str | None = None,
) -> tuple[NDArray[Any], int, int, bool]: ...
def int_matmul_plan(
    a: NDArray[Any], w: _I64, z_w: int, context: str | None = None
) -> tuple[str, int, int]: ...
def int_vnni(enabled: bool | None = None) -> bool: ...
def int_i16(enabled: bool | None = None) -> bool: ...
def int_i16_conv(enabled: bool | None = None) -> bool: ...
def int_u8i8_avx2(enabled: bool | None = None) -> bool: ...
def int_u8i8_plain(enabled: bool | None = None) -> bool: ...
def int_direct_conv(enabled: bool | None = None) -> bool: ...
def int_vector_epilogue(enabled: bool | None = None) -> bool: ...
def int_wide_epilogue(enabled: bool | None = None) -> bool: ...
def int_screen_epilogue(enabled: bool | None = None) -> bool: ...
def int_lookup_permute(enabled: bool | None = None) -> bool: ...
def int_matmul_weight_sums(w: _I64, z_x: int, context: str | None = None) -> _I64: ...
def int_conv2d(
    x: _I64,
    w: _I64,
    z_w: int,
    group: int,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    pad_value: int,
    context: str | None = None,
) -> _I64: ...
def int_conv2d_rescale(
    x: _I64,
    w: _I64,
    z_w: int,
    group: int,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    pad_value: int,
    lsbs: int,
    offset: float,
    sub: npt.NDArray[np.float64],
    mul: npt.NDArray[np.float64],
    add: npt.NDArray[np.float64] | None = None,
    context: str | None = None,
) -> npt.NDArray[np.float64]: ...
def int_conv_weight_sums(w: _I64, z_x: int, context: str | None = None) -> _I64: ...
def int_window_sum(
    x: _I64,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    extra: tuple[int, int],
    pad_value: int,
    context: str | None = None,
) -> _I64: ...
def int_window_max(
    x: _I64,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    pad_value: int,
    context: str | None = None,
) -> _I64: ...
def int_round_bit_pattern(x: _I64, lsbs: int, context: str | None = None) -> _I64: ...
def int_bit_width(lo: int, hi: int) -> tuple[int, bool]: ...
def int_gemm_bounds(
    w: _I64, z_w: int, x_lo: int, x_hi: int, lsbs: int, context: str | None = None
) -> tuple[_I64, _I64]: ...
def int_conv_bounds(
    w: _I64,
    z_w: int,
    x_lo: int,
    x_hi: int,
    in_hw: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    extra: tuple[int, int],
    pad_value: int,
    lsbs: int,
    context: str | None = None,
) -> tuple[_I64, _I64]: ...

# --- end integer kernels -------------------------------------------------------------------

# --- block cache (rust/src/py/block_cache.rs): see fhequant.kernels.memory ---------------
def block_cache_enter() -> object: ...
def block_cache_exit(previous: object) -> None: ...
def block_cache_clear() -> int: ...
def block_cache_limit(limit: int | None = None) -> int: ...
def block_cache_stats() -> tuple[int, int, int, int]: ...
