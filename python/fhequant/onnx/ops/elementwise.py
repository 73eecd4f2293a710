"""Element-wise arithmetic and math: Add, Sub, Mul, Div, Pow, Exp, Log, trig, Max/Min/Sum, Cast."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import scipy.special

from fhequant.errors import OnnxImportError, UnsupportedOpError
from fhequant.onnx.ops._util import NUMPY_ONNX_TYPES, onnx_dtype, quiet, storage_cast
from fhequant.onnx.registry import REQUIRED, register


@register("Add", "A, B")
def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b with numpy broadcasting."""
    return a + b


@register("Sub", "A, B")
def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b."""
    return a - b


@register("Mul", "A, B")
def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b."""
    return a * b


def _is_int(x: Any) -> bool:
    return np.asarray(x).dtype.kind in "iub"


@quiet
def div_quant(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """docs/contract.md §5.3 Div: a / where(b != 0, b, 1); integer operands floor-divide."""
    if _is_int(a) and _is_int(b):
        return np.floor_divide(a, np.where(b != 0, b, 1))
    return a / np.where(b != 0, b, 1)


@register("Div", "A, B", quant_fn=div_quant)
@quiet
def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Div: IEEE division; integers truncate toward zero (as onnxruntime)."""
    if _is_int(a) and _is_int(b):
        q = np.abs(a) // np.where(b != 0, np.abs(b), 1)
        return np.where((a < 0) ^ (b < 0), -q, q).astype(np.result_type(a, b))
    return a / b


@register("Mod", "A, B", {"fmod": 0})
@quiet
def mod(a: np.ndarray, b: np.ndarray, *, fmod: int = 0) -> np.ndarray:
    """ONNX Mod (opset 13): fmod=0 takes the divisor's sign (integers only, np.mod), fmod=1 the
    dividend's (np.fmod); a zero integer divisor gives 0 (as onnxruntime)."""
    a, b = np.asarray(a), np.asarray(b)
    if int(fmod) == 0 and (not _is_int(a) or not _is_int(b)):
        raise OnnxImportError(
            "Mod with fmod=0 takes integer inputs (opset 13's Mod, as onnxruntime; opset 28's "
            "float form is not implemented); use fmod=1 for floats"
        )
    if _is_int(a) and _is_int(b):
        safe = np.where(b != 0, b, 1)
        out = np.fmod(a, safe) if int(fmod) else np.mod(a, safe)
        return np.where(b != 0, out, 0).astype(np.result_type(a, b))
    return np.fmod(a, b)


@quiet
def power_quant(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x ** y with numpy promotion (docs/contract.md §0), the form calibration uses."""
    return np.power(x, y)


@register("Pow", "X, Y", quant_fn=power_quant)
@quiet
def power(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ONNX Pow: x ** y in the dtype of x (onnxruntime's output type is the base's)."""
    dtype = np.asarray(x).dtype
    if dtype.kind in "iu" and np.asarray(y).dtype.kind == "f":
        # onnxruntime computes an integer base to a float power in double, then truncates
        return np.trunc(np.power(np.asarray(x, np.float64), y)).astype(dtype)
    return np.asarray(np.power(x, y)).astype(dtype, copy=False)


def _unary(name: str, fn: Any, doc: str, domain: tuple[float, float] | None = None) -> None:
    @quiet
    def impl(x: np.ndarray) -> np.ndarray:
        return fn(x)

    quant_impl = None
    if domain is not None:
        lo, hi = domain

        @quiet
        def quant_impl(x: np.ndarray) -> np.ndarray:
            # docs/contract.md §5.3: a table lookup is evaluated on every integer of its
            # input range, also outside the function's domain; clip into it (no NaN)
            return fn(np.clip(x, lo, hi))

        quant_impl.__name__ = name.lower()
        quant_impl.__doc__ = f"{doc} The input clipped to [{lo}, {hi}] (docs/contract.md §5.3)."
    impl.__name__ = name.lower()
    impl.__doc__ = doc
    register(name, "X", quant_fn=quant_impl)(impl)


_unary("Neg", np.negative, "-x.")
_unary("Abs", np.abs, "|x|.")
_unary("Sign", np.sign, "sign(x).")
_unary("Floor", np.floor, "floor(x).")
_unary("Ceil", np.ceil, "ceil(x).")
_unary("Round", np.rint, "rint(x): round half to even.")
_unary("Exp", np.exp, "exp(x).")
_unary("Sqrt", np.sqrt, "sqrt(x).", (0.0, np.inf))
_unary("Erf", scipy.special.erf, "scipy.special.erf(x).")
_unary("Sin", np.sin, "sin(x).")
_unary("Cos", np.cos, "cos(x).")
_unary("Tan", np.tan, "tan(x).")
_unary("Asin", np.arcsin, "arcsin(x).", (-1.0, 1.0))
_unary("Acos", np.arccos, "arccos(x).", (-1.0, 1.0))
_unary("Atan", np.arctan, "arctan(x).")
_unary("Sinh", np.sinh, "sinh(x).")
_unary("Cosh", np.cosh, "cosh(x).")
_unary("Asinh", np.arcsinh, "arcsinh(x).")
_unary("Acosh", np.arccosh, "arccosh(x).", (1.0, np.inf))
_unary("Atanh", np.arctanh, "arctanh(x).", (-1.0 + 1e-7, 1.0 - 1e-7))


@quiet
def log_quant(x: np.ndarray) -> np.ndarray:
    """docs/contract.md §5.3 Log: log(max(x, 1e-8))."""
    return np.log(np.maximum(x, 1e-8))


@register("Log", "X", quant_fn=log_quant)
@quiet
def log(x: np.ndarray) -> np.ndarray:
    """ONNX Log: log(x) (-inf at 0, nan below)."""
    return np.log(x)


@quiet
def reciprocal_quant(x: np.ndarray) -> np.ndarray:
    """docs/contract.md §5.3 Reciprocal: 1 / where(x != 0, x, 1), as Div."""
    return np.reciprocal(np.where(x != 0, x, 1).astype(np.result_type(x, np.float32)))


@register("Reciprocal", "X", quant_fn=reciprocal_quant)
@quiet
def reciprocal(x: np.ndarray) -> np.ndarray:
    """1 / x."""
    return np.reciprocal(x)


@register("Identity", "X")
def identity(x: np.ndarray) -> np.ndarray:
    """x unchanged."""
    return x


@register(
    "Dropout",
    "data, ratio?, training_mode?",
    {"seed": None},
    raw=("ratio", "training_mode"),
    n_outputs=2,
)
def dropout(
    data: np.ndarray,
    ratio: np.ndarray | None = None,
    training_mode: np.ndarray | None = None,
    *,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Inference Dropout: (data, all-True mask).

    Raises:
        UnsupportedOpError: training_mode is true with a non-zero ratio (random dropout).
    """
    del seed
    training = training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0])
    rate = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
    if training and rate != 0.0:
        raise UnsupportedOpError(
            f"Dropout with training_mode=True (ratio {rate}) drops random values: fhequant "
            "runs inference only; export the model in eval mode (model.eval()) or set "
            "training_mode to False"
        )
    return data, np.ones(np.shape(data), dtype=bool)


def _fold(fn: Any, xs: tuple[np.ndarray, ...]) -> np.ndarray:
    return functools.reduce(fn, xs)


@register("Max", "data_0*")
def maximum(*xs: np.ndarray) -> np.ndarray:
    """Element-wise max of all inputs."""
    return _fold(np.maximum, xs)


@register("Min", "data_0*")
def minimum(*xs: np.ndarray) -> np.ndarray:
    """Element-wise min of all inputs."""
    return _fold(np.minimum, xs)


@register("Sum", "data_0*")
def sum_(*xs: np.ndarray) -> np.ndarray:
    """Element-wise sum of all inputs, left to right."""
    return _fold(np.add, xs)


@register("Mean", "data_0*")
def mean(*xs: np.ndarray) -> np.ndarray:
    """Element-wise mean of all inputs."""
    return _fold(np.add, xs) / len(xs)


_TO_FLOAT64 = {1, 9, 11}  # FLOAT, BOOL, DOUBLE


def cast_quant(x: np.ndarray, *, to: int, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """docs/contract.md §5.3 Cast: BOOL/FLOAT/DOUBLE give float64 (BOOL as 0/1); other types cast
    exactly (storage types such as float8 are refused: calibration computes in numpy types)."""
    del saturate, round_mode
    x = np.asarray(x)
    if int(to) == 9:
        return (x != 0).astype(np.float64)
    if int(to) in _TO_FLOAT64:
        return x.astype(np.float64)
    return x.astype(onnx_dtype(to))


@register("Cast", "input", {"to": REQUIRED, "saturate": 1, "round_mode": "up"}, quant_fn=cast_quant)
def cast(x: np.ndarray, *, to: int, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """ONNX Cast to the numpy dtype of ``to``; to a storage type (bfloat16, float8, float4,
    int4, int2: ml_dtypes arrays) with ONNX's saturation and rounding rules."""
    if int(to) in NUMPY_ONNX_TYPES:
        return np.asarray(x).astype(onnx_dtype(to))
    return storage_cast(np.asarray(x), int(to), saturate=bool(saturate), round_mode=round_mode)
