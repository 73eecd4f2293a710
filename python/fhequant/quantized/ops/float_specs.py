"""Float implementations of the quantized ONNX ops and their metadata (SPEC §2.1, §5.3).

Each :class:`FloatOpSpec` gives an op's input names (required, optional, variadic), attribute
defaults, raw inputs (shapes, axes, indices: never quantized) and whether the output is raw.
The implementations follow SPEC §5.3 and keep numpy 1.26 dtypes (float32 stays float32).

These are the quantized layer's own copies until ``fhequant.onnx`` provides its registry;
``float_spec`` is the single place that resolves an op type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fhequant.errors import UnsupportedOpError

__all__ = ["FLOAT_SPECS", "FloatOpSpec", "float_spec"]


@dataclass(frozen=True)
class FloatOpSpec:
    """Metadata and float implementation of one ONNX op type."""

    op_type: str
    impl: Callable[..., Any]
    input_names: tuple[str, ...]
    n_required: int
    attr_defaults: Mapping[str, Any] = field(default_factory=dict)
    raw_inputs: frozenset[int] = frozenset()
    variadic: bool = False
    raw_output: bool = False


FLOAT_SPECS: dict[str, FloatOpSpec] = {}


def _reg(
    op_type: str,
    impl: Callable[..., Any],
    inputs: tuple[str, ...] = ("x",),
    n_required: int | None = None,
    raw: tuple[int, ...] = (),
    variadic: bool = False,
    raw_output: bool = False,
    **attr_defaults: Any,
) -> None:
    FLOAT_SPECS[op_type] = FloatOpSpec(
        op_type,
        impl,
        inputs,
        len(inputs) if n_required is None else n_required,
        dict(attr_defaults),
        frozenset(raw),
        variadic,
        raw_output,
    )


def _swv(x: Any, shape: tuple[int, int], axis: tuple[int, int]) -> Any:
    return sliding_window_view(x, shape, axis=axis)  # type: ignore[call-overload]


def float_spec(op_type: str) -> FloatOpSpec:
    """The spec of an ONNX op type.

    Args:
        op_type: the ONNX op type ("domain.op" for non-default domains).

    Returns:
        Its FloatOpSpec.
    """
    try:
        return FLOAT_SPECS[op_type]
    except KeyError:
        raise UnsupportedOpError(
            f"ONNX op {op_type!r} has no float implementation; available: {sorted(FLOAT_SPECS)}"
        ) from None


# --- univariate -----------------------------------------------------------------------------

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_GAMMA = 1.0507009873554804934193349852946


def _sigmoid(x: Any) -> Any:
    return np.exp(-np.logaddexp(0, -x))


def _erf(x: Any) -> Any:
    from scipy.special import erf

    return erf(x)


def _relu(x: Any) -> Any:
    return np.maximum(x, 0)


def _celu(x: Any, alpha: float) -> Any:
    return np.maximum(0, x) + np.minimum(0, alpha * (np.exp(x / alpha) - 1))


def _elu(x: Any, alpha: float) -> Any:
    return np.where(x > 0, x, alpha * (np.exp(x) - 1))


def _hard_sigmoid(x: Any, alpha: float, beta: float) -> Any:
    return np.maximum(0, np.minimum(1, alpha * x + beta))


def _hard_swish(x: Any) -> Any:
    return x * np.maximum(0, np.minimum(1, x / 6 + 0.5))


def _leaky_relu(x: Any, alpha: float) -> Any:
    return np.where(x > 0, x, x * alpha)


def _selu(x: Any, alpha: float, gamma: float) -> Any:
    return np.where(x > 0, gamma * x, gamma * (alpha * np.exp(x) - alpha))


def _prelu(x: Any, slope: Any) -> Any:
    return np.minimum(0, slope * x) + np.maximum(0, x)


def _clip(x: Any, min: Any, max: Any) -> Any:
    return np.clip(x, min, max)


def _as_f64(v: Any) -> Any:
    """v as float64, keeping tracers (np.asarray would break them)."""
    return v.astype(np.float64) if hasattr(v, "astype") else np.float64(v)


def _cast(x: Any, to: int) -> Any:
    if to == 9:  # BOOL
        return _as_f64(x != 0)
    if to in (1, 11):  # FLOAT, DOUBLE
        return _as_f64(x)
    from onnx.helper import tensor_dtype_to_np_dtype

    return np.asarray(x).astype(tensor_dtype_to_np_dtype(to))


def _where(c: Any, t: Any, f: Any) -> Any:
    return c * t + (1 - c) * f


def _batchnorm(
    x: Any,
    scale: Any,
    bias: Any,
    mean: Any,
    var: Any,
    epsilon: float,
    momentum: float,
    training_mode: int,
) -> Any:
    ones = (1,) * (len(x.shape) - 2)

    def r(v: Any) -> Any:
        return np.asarray(v).reshape(-1, *ones)

    return (x - r(mean)) / np.sqrt(r(var) + epsilon) * r(scale) + r(bias)


def _brevitas_quant(
    x: Any,
    scale: Any,
    zero_point: Any,
    bit_width: Any,
    rounding_mode: str,
    signed: int,
    narrow: int,
) -> Any:
    b = int(np.asarray(bit_width).item()) if np.ndim(bit_width) == 0 else int(bit_width)
    if signed:
        lo = -(2 ** (b - 1)) + (1 if narrow else 0)
        hi = 2 ** (b - 1) - 1
    else:
        lo, hi = 0, 2**b - 1
    y = x / scale + zero_point
    y = np.clip(y, lo, hi)
    y = np.rint(y)
    return (y - zero_point) * scale


def _f64(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def wrapped(a: Any, b: Any) -> Any:
        return _as_f64(fn(a, b))

    return wrapped


_reg("Abs", np.abs)
_reg("Cast", _cast, to=1)
_reg("Celu", _celu, alpha=1.0)
_reg("Clip", _clip, ("x", "min", "max"))
_reg("Elu", _elu, alpha=1.0)
_reg("Erf", _erf)
_reg("Exp", np.exp)
_reg("Floor", np.floor)
_reg("HardSigmoid", _hard_sigmoid, alpha=0.2, beta=0.5)
_reg("HardSwish", _hard_swish)
_reg("Identity", lambda x: x)
_reg("LeakyRelu", _leaky_relu, alpha=0.01)
_reg("Log", lambda x: np.log(np.maximum(x, 1e-8)))
_reg("Neg", np.negative)
_reg("Not", lambda x: _as_f64(np.logical_not(x)))
_reg("PRelu", _prelu, ("x", "slope"))
_reg("Relu", _relu)
_reg("Round", np.rint)
_reg("Selu", _selu, alpha=_SELU_ALPHA, gamma=_SELU_GAMMA)
_reg("Sigmoid", _sigmoid)
_reg("Sign", np.sign)
_reg("Softplus", lambda x: np.log(np.exp(x) + 1))
_reg("Tanh", np.tanh)
_reg("Where", _where, ("condition", "x", "y"))
_reg(
    "BatchNormalization",
    _batchnorm,
    ("x", "scale", "bias", "input_mean", "input_var"),
    epsilon=1e-5,
    momentum=0.9,
    training_mode=0,
)
_reg(
    "onnx.brevitas.Quant",
    _brevitas_quant,
    ("x", "scale", "zero_point", "bit_width"),
    raw=(1, 2, 3),
    rounding_mode="ROUND",
    signed=1,
    narrow=0,
)
_reg("Equal", _f64(np.equal), ("x", "y"))
_reg("Greater", _f64(np.greater), ("x", "y"))
_reg("GreaterOrEqual", _f64(np.greater_equal), ("x", "y"))
_reg("Less", _f64(np.less), ("x", "y"))
_reg("LessOrEqual", _f64(np.less_equal), ("x", "y"))
_reg("Or", _f64(np.logical_or), ("x", "y"))
_reg("Pow", lambda x, y: x**y, ("x", "y"))


def _variadic(fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def impl(*xs: Any) -> Any:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return impl


_reg("Max", _variadic(np.maximum), ("data_0",), variadic=True)
_reg("Min", _variadic(np.minimum), ("data_0",), variadic=True)


# --- arithmetic -----------------------------------------------------------------------------


def _div(a: Any, b: Any) -> Any:
    if np.issubdtype(np.asarray(a).dtype, np.integer) and np.issubdtype(
        np.asarray(b).dtype, np.integer
    ):
        return np.floor_divide(a, b)
    return a / np.where(b != 0, b, 1)


_reg("Add", lambda a, b: a + b, ("a", "b"))
_reg("Sub", lambda a, b: a - b, ("a", "b"))
_reg("Mul", lambda a, b: a * b, ("a", "b"))
_reg("Div", _div, ("a", "b"))


# --- linear ---------------------------------------------------------------------------------


def _gemm(a: Any, b: Any, c: Any = None, *, alpha: Any, beta: Any, transA: int, transB: int) -> Any:
    if transA:
        a = np.swapaxes(a, -1, -2)
    if transB:
        b = np.swapaxes(b, -1, -2)
    y = a @ b
    if alpha != 1:
        y = alpha * y
    if c is not None and beta != 0:
        y = y + (c if beta == 1 else beta * c)
    return y


def _matmul(a: Any, b: Any) -> Any:
    return a @ b


def _pad_float32(x: Any, pads4: tuple[int, int, int, int], value: float = 0.0) -> Any:
    hb, wb, he, we = pads4
    if hb == wb == he == we == 0:
        return x
    n, c, h, w = x.shape
    out = np.full((n, c, h + hb + he, w + wb + we), value, dtype=np.float32)
    out[:, :, hb : hb + h, wb : wb + w] = x
    return out


def _as_2d(
    x: Any, kernel_shape: Any, strides: Any, pads: Any
) -> tuple[Any, tuple[int, int], tuple[int, int], tuple[int, int, int, int], bool]:
    """View a 1-D (N, C, L) problem as 2-D with H = 1 (ONNX pads: begins, then ends)."""
    ks = list(kernel_shape)
    st = list(strides) if strides is not None else [1] * len(ks)
    pd = list(pads) if pads is not None else [0] * (2 * len(ks))
    if len(ks) == 1:
        return (
            np.asarray(x)[:, :, None, :],
            (1, int(ks[0])),
            (1, int(st[0])),
            (0, int(pd[0]), 0, int(pd[1])),
            True,
        )
    return (
        x,
        (int(ks[0]), int(ks[1])),
        (int(st[0]), int(st[1])),
        (int(pd[0]), int(pd[1]), int(pd[2]), int(pd[3])),
        False,
    )


def _conv(
    x: Any,
    w: Any,
    b: Any = None,
    *,
    auto_pad: str,
    dilations: Any,
    group: int,
    kernel_shape: Any,
    pads: Any,
    strides: Any,
) -> Any:
    w = np.asarray(w)
    ks = kernel_shape if kernel_shape is not None else w.shape[2:]
    x2, (kh, kw), (sh, sw), p4, is_1d = _as_2d(x, ks, strides, pads)
    w2 = w[:, :, None, :] if is_1d else w
    xp = _pad_float32(x2, p4).astype(np.float64)
    w64 = w2.astype(np.float32).astype(np.float64)
    o, cg = w64.shape[:2]
    og = o // group
    outs = []
    for g in range(group):
        win = _swv(xp[:, g * cg : (g + 1) * cg], (kh, kw), axis=(2, 3))
        win = win[:, :, ::sh, ::sw]
        outs.append(np.einsum("ncijkl,ockl->noij", win, w64[g * og : (g + 1) * og]))
    y = np.concatenate(outs, axis=1)
    if b is not None:
        y = y + np.asarray(b).astype(np.float32).astype(np.float64).reshape(1, -1, 1, 1)
    return y[:, :, 0, :] if is_1d else y


def pool_geometry(
    h: int, w: int, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int, int, int], ceil: int
) -> tuple[int, int, int, int]:
    """Output size and the extra end padding of ceil mode (0 in floor mode)."""
    ph, pw = h + p[0] + p[2], w + p[1] + p[3]
    if ceil:
        oh = -(-(ph - k[0]) // s[0]) + 1
        ow = -(-(pw - k[1]) // s[1]) + 1
        if (oh - 1) * s[0] >= h + p[0]:
            oh -= 1
        if (ow - 1) * s[1] >= w + p[1]:
            ow -= 1
    else:
        oh = (ph - k[0]) // s[0] + 1
        ow = (pw - k[1]) // s[1] + 1
    extra_h = max(0, (oh - 1) * s[0] + k[0] - ph)
    extra_w = max(0, (ow - 1) * s[1] + k[1] - pw)
    return oh, ow, extra_h, extra_w


def avgpool_norm(
    h: int, w: int, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int, int, int], ceil: int
) -> Any:
    """Cells of each window inside the (floor-)padded input: kh·kw, or an array in ceil mode."""
    oh, ow, eh, ew = pool_geometry(h, w, k, s, p, ceil)
    if eh == 0 and ew == 0:
        return k[0] * k[1]
    ph, pw = h + p[0] + p[2], w + p[1] + p[3]
    rows = np.minimum(np.arange(oh) * s[0] + k[0], ph) - np.arange(oh) * s[0]
    cols = np.minimum(np.arange(ow) * s[1] + k[1], pw) - np.arange(ow) * s[1]
    return (rows[:, None] * cols[None, :]).reshape(1, 1, oh, ow)


def _avgpool(
    x: Any,
    *,
    auto_pad: str,
    ceil_mode: int,
    count_include_pad: int,
    kernel_shape: Any,
    pads: Any,
    strides: Any,
) -> Any:
    x2, k, s, p4, is_1d = _as_2d(x, kernel_shape, strides, pads)
    h, w = x2.shape[-2:]
    _, _, eh, ew = pool_geometry(h, w, k, s, p4, ceil_mode)
    xp = _pad_float32(x2, p4).astype(np.float64)
    xp = np.pad(xp, ((0, 0), (0, 0), (0, eh), (0, ew)))
    win = _swv(xp, k, axis=(2, 3))[:, :, :: s[0], :: s[1]]
    y = win.sum(axis=(-2, -1)) / avgpool_norm(h, w, k, s, p4, ceil_mode)
    return y[:, :, 0, :] if is_1d else y


def _maxpool(
    x: Any,
    *,
    auto_pad: str,
    ceil_mode: int,
    dilations: Any,
    kernel_shape: Any,
    pads: Any,
    storage_order: int,
    strides: Any,
) -> Any:
    x2, k, s, p4, is_1d = _as_2d(x, kernel_shape, strides, pads)
    hb, wb, he, we = p4
    xp = np.pad(np.asarray(x2), ((0, 0), (0, 0), (hb, he), (wb, we)), constant_values=-np.inf)
    win = _swv(xp, k, axis=(2, 3))[:, :, :: s[0], :: s[1]]
    y = win.max(axis=(-2, -1))
    return y[:, :, 0, :] if is_1d else y


def _unfold(x: Any, *, kernel_shape: Any, pads: Any, strides: Any) -> Any:
    x2, k, s, p4, _ = _as_2d(x, kernel_shape, strides, pads)
    xp = _pad_float32(x2, p4).astype(np.float64)
    win = _swv(xp, k, axis=(2, 3))[:, :, :: s[0], :: s[1]]
    n, c, oh, ow = win.shape[:4]
    # (N, C, OH, OW, kh, kw) -> (N, C, kh, kw, OH·OW) -> (N, C·kh·kw, L)
    return win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * k[0] * k[1], oh * ow)


def _reduce_sum(data: Any, axes: Any = None, *, keepdims: int, noop_with_empty_axes: int) -> Any:
    if axes is None or np.size(axes) == 0:
        if noop_with_empty_axes:
            return data
        return np.sum(data, axis=None, keepdims=bool(keepdims))
    return np.sum(data, axis=tuple(int(a) for a in np.ravel(axes)), keepdims=bool(keepdims))


_reg("Gemm", _gemm, ("a", "b", "c"), 2, alpha=1.0, beta=1.0, transA=0, transB=0)
_reg("MatMul", _matmul, ("a", "b"))
_reg(
    "Conv",
    _conv,
    ("x", "w", "b"),
    2,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
)
_reg(
    "AveragePool",
    _avgpool,
    auto_pad="NOTSET",
    ceil_mode=0,
    count_include_pad=0,
    kernel_shape=None,
    pads=None,
    strides=None,
)
_reg(
    "MaxPool",
    _maxpool,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    storage_order=0,
    strides=None,
)
_reg("Unfold", _unfold, kernel_shape=None, pads=None, strides=None)
_reg("ReduceSum", _reduce_sum, ("data", "axes"), 1, (1,), keepdims=1, noop_with_empty_axes=0)


# --- shape ----------------------------------------------------------------------------------


def _reshape(data: Any, shape: Any, *, allowzero: int) -> Any:
    shape = [int(d) for d in np.ravel(shape)]
    if not allowzero:
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return np.reshape(data, _resolve_minus_one(data, shape))


def _resolve_minus_one(data: Any, shape: list[int]) -> tuple[int, ...]:
    """Replace a -1 in a target shape by its value (tracers want explicit shapes)."""
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1]))
        size = int(np.prod(data.shape))
        shape = [size // known if d == -1 else d for d in shape]
    return tuple(shape)


def _flatten(data: Any, *, axis: int) -> Any:
    axis = axis % data.ndim if data.ndim else 0
    lead = int(np.prod(data.shape[:axis])) if axis else 1
    return np.reshape(data, (lead, int(np.prod(data.shape)) // max(lead, 1)))


def _transpose(data: Any, *, perm: Any) -> Any:
    return np.transpose(data, perm)


def _concat(*xs: Any, axis: int) -> Any:
    return np.concatenate(xs, axis=axis)


def _slice(data: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
    starts = [int(v) for v in np.ravel(starts)]
    ends = [int(v) for v in np.ravel(ends)]
    axes = list(range(len(starts))) if axes is None else [int(v) for v in np.ravel(axes)]
    steps = [1] * len(starts) if steps is None else [int(v) for v in np.ravel(steps)]
    index: list[Any] = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[axis] = slice(start, end, step)
    return data[tuple(index)]


def _gather(data: Any, indices: Any, *, axis: int) -> Any:
    axis = axis % data.ndim
    index: list[Any] = [slice(None)] * data.ndim
    index[axis] = np.asarray(indices)
    return data[tuple(index)]


def _squeeze(data: Any, axes: Any = None) -> Any:
    if axes is None:
        return np.squeeze(data)
    return np.squeeze(data, axis=tuple(int(a) for a in np.ravel(axes)))


def _unsqueeze(data: Any, axes: Any) -> Any:
    axes_list = [int(a) for a in np.ravel(axes)]
    ndim = data.ndim + len(axes_list)
    shape = list(data.shape)
    for a in sorted(a % ndim for a in axes_list):
        shape.insert(a, 1)
    return np.reshape(data, shape)


def _expand(data: Any, shape: Any) -> Any:
    target = [int(d) for d in np.ravel(shape)]
    out_shape = np.broadcast_shapes(tuple(data.shape), tuple(target))
    return np.broadcast_to(data, out_shape)


def _pad(data: Any, pads: Any, constant_value: Any = None, *, mode: str) -> Any:
    p = [int(v) for v in np.ravel(pads)]
    n = len(p) // 2
    value = 0 if constant_value is None else np.asarray(constant_value).item()
    widths = [(0, 0)] * (data.ndim - n) + [(p[i], p[i + n]) for i in range(n)]
    return np.pad(data, widths, mode="constant", constant_values=value)


def _shape(data: Any) -> Any:
    return np.asarray(np.shape(data), dtype=np.int64)


def _constant_of_shape(shape: Any, *, value: Any) -> Any:
    fill = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full([int(d) for d in np.ravel(shape)], fill[0], dtype=fill.dtype)


_reg("Reshape", _reshape, ("data", "shape"), raw=(1,), allowzero=0)
_reg("Flatten", _flatten, ("input",), axis=1)
_reg("Transpose", _transpose, ("data",), perm=None)
_reg("Concat", _concat, ("inputs",), variadic=True, axis=0)
_reg("Slice", _slice, ("data", "starts", "ends", "axes", "steps"), 3, raw=(1, 2, 3, 4))
_reg("Gather", _gather, ("data", "indices"), raw=(1,), axis=0)
_reg("Squeeze", _squeeze, ("data", "axes"), 1, raw=(1,))
_reg("Unsqueeze", _unsqueeze, ("data", "axes"), raw=(1,))
_reg("Expand", _expand, ("input", "shape"), raw=(1,))
_reg("Pad", _pad, ("data", "pads", "constant_value"), 2, raw=(1, 2), mode="constant")
_reg("Shape", _shape, ("data",), raw_output=True)
_reg("ConstantOfShape", _constant_of_shape, ("input",), raw=(0,), raw_output=True, value=None)
