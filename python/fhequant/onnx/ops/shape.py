"""Shape and data movement: Reshape, Flatten, Transpose, (Un)Squeeze, Concat, Expand, Slice,
Gather, Pad, Split, Tile, Range, Shape, Constant, ConstantOfShape, OneHot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fhequant.errors import OnnxImportError, ShapeError
from fhequant.onnx.ops._util import int_list, norm_axes
from fhequant.onnx.registry import REQUIRED, register


@register("Reshape", "data, shape", {"allowzero": 0}, raw=("shape",))
def reshape(x: np.ndarray, shape: np.ndarray, *, allowzero: int = 0) -> np.ndarray:
    """ONNX Reshape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    dims = int_list(shape)
    if not allowzero:
        dims = [np.shape(x)[i] if v == 0 else v for i, v in enumerate(dims)]
    return np.reshape(x, dims)


def _rank(x: Any) -> int:
    """The rank of an array or of a concrete tracer (which has .shape but no np.ndim)."""
    shape = getattr(x, "shape", None)
    return len(shape) if shape is not None else int(np.ndim(x))


def _axis(axis: Any, rank: int, op: str) -> int:
    """An axis attribute in [-rank, rank), as a non-negative index."""
    value = int(axis)
    if not -rank <= value < rank:
        raise ShapeError(f"{op} axis {value} is out of range for rank {rank}")
    return value + rank if value < 0 else value


@register("Flatten", "input", {"axis": 1})
def flatten(x: np.ndarray, *, axis: int = 1) -> np.ndarray:
    """2-D: the axes before ``axis`` into rows, the rest into columns."""
    shp = np.shape(x)
    axis = int(axis)
    if not -len(shp) <= axis <= len(shp):
        raise ShapeError(f"Flatten axis {axis} is out of range for rank {len(shp)}")
    axis = axis + len(shp) if axis < 0 else axis
    rows = int(np.prod(shp[:axis], dtype=np.int64))
    return np.reshape(x, (rows, int(np.prod(shp[axis:], dtype=np.int64))))


@register("Transpose", "data", {"perm": None})
def transpose(x: np.ndarray, *, perm: Sequence[int] | None = None) -> np.ndarray:
    """Permute axes (reverse them when perm is absent)."""
    return np.transpose(x, None if perm is None else tuple(perm))


@register("Squeeze", "data, axes?", raw=("axes",))
def squeeze(x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    """Remove the given size-1 axes (all of them when axes is absent)."""
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(norm_axes(int_list(axes), np.ndim(x))))


@register("Unsqueeze", "data, axes", raw=("axes",))
def unsqueeze(x: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Insert size-1 axes at the given positions of the output."""
    ax = int_list(axes)
    return np.expand_dims(x, tuple(norm_axes(ax, np.ndim(x) + len(ax))))


@register("Concat", "inputs*", {"axis": REQUIRED})
def concat(*xs: np.ndarray, axis: int) -> np.ndarray:
    """Concatenate along ``axis``."""
    return np.concatenate(xs, axis=_axis(axis, _rank(xs[0]) if xs else 0, "Concat"))


@register("Expand", "input, shape", raw=("shape",))
def expand(x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Broadcast x to the bidirectional broadcast of its shape and ``shape`` (a copy)."""
    target = np.broadcast_shapes(np.shape(x), tuple(int_list(shape)))
    return np.array(np.broadcast_to(x, target))


def _slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice clamping turned into a Python slice."""
    if step == 0:
        raise OnnxImportError("Slice step must not be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step) if dim > 0 else slice(0, 0)


@register(
    "Slice",
    "data, starts, ends, axes?, steps?",
    raw=("starts", "ends", "axes", "steps"),
)
def slice_(
    x: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    axes: np.ndarray | None = None,
    steps: np.ndarray | None = None,
) -> np.ndarray:
    """ONNX Slice (clamped starts/ends, negative steps)."""
    st, en = int_list(starts), int_list(ends)
    ax = norm_axes(int_list(axes), np.ndim(x)) if axes is not None else list(range(len(st)))
    sp = int_list(steps) if steps is not None else [1] * len(st)
    index: list[Any] = [slice(None)] * np.ndim(x)
    for a, s0, e0, k in zip(ax, st, en, sp, strict=False):
        index[a] = _slice_bounds(s0, e0, k, np.shape(x)[a])
    return np.asarray(x)[tuple(index)]


@register("Gather", "data, indices", {"axis": 0}, raw=("indices",))
def gather(x: np.ndarray, indices: np.ndarray, *, axis: int = 0) -> np.ndarray:
    """np.take along ``axis`` (negative indices count from the end)."""
    idx = np.asarray(indices).astype(np.int64, copy=False)
    dim = np.shape(x)[int(axis)]
    if idx.size and (idx.max() >= dim or idx.min() < -dim):
        raise ShapeError(f"Gather indices out of range for axis {axis} of size {dim}")
    return np.take(x, idx, axis=int(axis))


@register("GatherND", "data, indices", {"batch_dims": 0}, raw=("indices",))
def gather_nd(x: np.ndarray, indices: np.ndarray, *, batch_dims: int = 0) -> np.ndarray:
    """ONNX GatherND: the last axis of ``indices`` (length k) addresses the first k axes of
    ``x`` after its ``batch_dims`` leading (shared) axes; negative indices count from the end.
    The output shape is indices.shape[:-1] + x.shape[batch_dims + k:]."""
    x, idx = np.asarray(x), np.asarray(indices).astype(np.int64, copy=False)
    b = int(batch_dims)
    if idx.ndim < 1 or not 0 <= b < min(x.ndim, idx.ndim):
        raise ShapeError(
            f"GatherND batch_dims {b} must be below the ranks of data ({x.ndim}) and indices "
            f"({idx.ndim})"
        )
    if x.shape[:b] != idx.shape[:b]:
        raise ShapeError(
            f"GatherND: the {b} batch axes differ: data {x.shape[:b]}, indices {idx.shape[:b]}"
        )
    k = idx.shape[-1]
    if k > x.ndim - b:
        raise ShapeError(f"GatherND: index tuples of {k} for {x.ndim - b} non-batch axes")
    dims = np.array(x.shape[b : b + k], dtype=np.int64)
    if idx.size and (np.any(idx >= dims) or np.any(idx < -dims)):
        raise ShapeError(f"GatherND indices out of range for axes of sizes {dims.tolist()}")
    idx = np.where(idx < 0, idx + dims, idx)
    batch = int(np.prod(x.shape[:b], dtype=np.int64))
    flat_x = x.reshape((batch, *x.shape[b:]))
    flat_i = idx.reshape((batch, *idx.shape[b:]))
    parts = [flat_x[n][tuple(np.moveaxis(flat_i[n], -1, 0))] for n in range(batch)]
    empty = np.empty((0, *idx.shape[b:-1], *x.shape[b + k :]), x.dtype)
    out = np.stack(parts) if parts else empty
    return out.reshape(idx.shape[:-1] + x.shape[b + k :])


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


@register(
    "Pad",
    "data, pads, constant_value?, axes?",
    {"mode": "constant"},
    raw=("pads", "constant_value", "axes"),
)
def pad(
    x: np.ndarray,
    pads: np.ndarray,
    constant_value: np.ndarray | None = None,
    axes: np.ndarray | None = None,
    *,
    mode: str = "constant",
) -> np.ndarray:
    """ONNX Pad (constant, reflect, edge, wrap); negative pads crop."""
    rank = np.ndim(x)
    p = int_list(pads)
    ax = norm_axes(int_list(axes), rank) if axes is not None else list(range(rank))
    if len(p) != 2 * len(ax):
        raise ShapeError(f"Pad has {len(p)} pads for {len(ax)} axes")
    width = [[0, 0] for _ in range(rank)]
    for i, a in enumerate(ax):
        width[a] = [p[i], p[i + len(ax)]]
    npmode = _PAD_MODES.get(str(mode))
    if npmode is None:
        raise OnnxImportError(f"Pad mode {mode!r} is not one of {sorted(_PAD_MODES)}")
    grow = [(max(b, 0), max(e, 0)) for b, e in width]
    if npmode == "constant":
        value = 0 if constant_value is None or np.size(constant_value) == 0 else constant_value
        y = np.pad(x, grow, mode="constant", constant_values=np.asarray(value).reshape(-1)[0])
    else:
        y = np.pad(x, grow, mode=npmode)  # type: ignore[call-overload]
    crop = tuple(slice(-min(b, 0), y.shape[i] + min(e, 0)) for i, (b, e) in enumerate(width))
    return y[crop]


@register(
    "Split",
    "input, split?",
    {"axis": 0, "num_outputs": None},
    raw=("split",),
    n_outputs=-1,
)
def split(
    x: np.ndarray,
    sizes: np.ndarray | None = None,
    *,
    axis: int = 0,
    num_outputs: int | None = None,
) -> tuple[np.ndarray, ...]:
    """Split along ``axis`` by the given sizes, or into ``num_outputs`` parts (the last one
    smaller when the axis does not divide evenly; the module sets num_outputs to the node's
    output count when neither is given)."""
    dim = np.shape(x)[_axis(axis, _rank(x), "Split")]
    if sizes is not None and np.size(sizes):
        parts = int_list(sizes)
        if sum(parts) != dim or any(p < 0 for p in parts):
            raise ShapeError(
                f"Split sizes {parts} do not add up to the {dim} entries of axis {axis}"
            )
        bounds = np.cumsum(parts)[:-1]
    else:
        if not num_outputs:
            raise OnnxImportError("Split needs a split input or num_outputs")
        step = -(-dim // int(num_outputs))
        bounds = np.arange(step, dim, step)
    return tuple(np.split(x, bounds, axis=int(axis)))


@register("Tile", "input, repeats", raw=("repeats",))
def tile(x: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    """np.tile with one repeat per axis."""
    return np.tile(x, int_list(repeats))


@register("Range", "start, limit, delta", {"stash_type": 1}, raw=("start", "limit", "delta"))
def range_(
    start: np.ndarray, limit: np.ndarray, delta: np.ndarray, *, stash_type: int = 1
) -> np.ndarray:
    """start, start + delta, ... up to (excluding) limit, in the dtype of start; float16 and
    bfloat16 computed in float32 when ``stash_type`` is 1 (opset 27's default), cast back."""
    dtype = np.asarray(start).dtype
    s0, s1, d = (np.asarray(v).reshape(-1)[0] for v in (start, limit, delta))
    if int(stash_type) == 1 and dtype.name in ("float16", "bfloat16"):
        s0, s1, d = (np.float32(v) for v in (s0, s1, d))
    if d == 0:
        raise OnnxImportError("Range delta must not be 0")
    n = max(int(np.ceil((s1 - s0) / d)), 0)
    return (s0 + np.arange(n, dtype=np.asarray(s0).dtype) * d).astype(dtype)


@register("Shape", "data", {"start": 0, "end": None}, raw_output=True)
def shape(x: np.ndarray, *, start: int = 0, end: int | None = None) -> np.ndarray:
    """The shape as int64 (opset 15 start/end slicing)."""
    return np.array(np.shape(x)[int(start) : None if end is None else int(end)], dtype=np.int64)


@register("ConstantOfShape", "input", {"value": None}, raw=("input",))
def constant_of_shape(dims: np.ndarray, *, value: np.ndarray | None = None) -> np.ndarray:
    """A tensor of the given shape filled with ``value`` (float32 0 by default)."""
    v = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full(int_list(dims), v[0], dtype=v.dtype)


_CONSTANT_ATTRS = (
    "value",
    "value_float",
    "value_floats",
    "value_int",
    "value_ints",
    "value_string",
    "value_strings",
    "sparse_value",
)


@register("Constant", "", dict.fromkeys(_CONSTANT_ATTRS))
def constant(**attrs: Any) -> np.ndarray:
    """The constant set by exactly one of the value attributes."""
    given = {k: v for k, v in attrs.items() if v is not None}
    if len(given) != 1:
        raise OnnxImportError(f"Constant needs exactly one value attribute, got {sorted(given)}")
    ((key, v),) = given.items()
    if key in ("value_float", "value_floats"):
        return np.array(v, dtype=np.float32)
    if key in ("value_int", "value_ints"):
        return np.array(v, dtype=np.int64)
    if key == "sparse_value":
        raise OnnxImportError("Constant with sparse_value is not supported")
    return np.array(v)


@register("OneHot", "indices, depth, values", {"axis": -1}, raw=("indices", "depth", "values"))
def one_hot(
    indices: np.ndarray, depth: np.ndarray, values: np.ndarray, *, axis: int = -1
) -> np.ndarray:
    """values[1] where the index matches, values[0] elsewhere (negative indices wrap)."""
    n = int(np.asarray(depth).reshape(-1)[0])
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + n, idx)
    vals = np.asarray(values).reshape(-1)
    hot = idx[..., None] == np.arange(n)
    out = np.where(hot, vals[1], vals[0]).astype(vals.dtype)
    rank = out.ndim
    ax = int(axis) + rank if int(axis) < 0 else int(axis)
    return np.moveaxis(out, -1, ax)
