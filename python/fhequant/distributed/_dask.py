"""Loading Dask lazily, finding the client, and shaping Dask collections into row partitions."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from fhequant.errors import DistributedError, GraphInputError, MissingDependencyError

__all__ = ["DaskData", "aligned_arrays", "is_dask", "require_dask", "resolve_client"]


def require_dask() -> tuple[Any, Any]:
    """``(dask.array, distributed)``, or a MissingDependencyError naming the extra."""
    try:
        import dask.array as da

        import distributed
    except ImportError as exc:  # pragma: no cover - the dask extra is in the test extra
        raise MissingDependencyError(
            "distributed calibration and inference need Dask: pip install fhequant[dask]"
        ) from exc
    return da, distributed


def is_dask(value: Any) -> bool:
    """A Dask collection (array or DataFrame), recognised without importing Dask."""
    return type(value).__module__.split(".")[0] in ("dask", "dask_expr") and hasattr(
        value, "__dask_graph__"
    )


class DaskData:
    """Calibration data on Dask, bound to a client.

    ``build_quantized_module(model, DaskData(x, client=client))`` calibrates on ``client``;
    a bare Dask array, DataFrame or tuple of arrays uses the active client.

    Args:
        data: a ``dask.array.Array`` (rows on axis 0), a Dask DataFrame of feature columns,
            or a tuple of arrays (one per model input).
        client: a ``distributed.Client``; None: the active one.
    """

    def __init__(self, data: Any, client: Any = None) -> None:
        self.data = data
        self.client = client


def resolve_client(client: Any = None) -> Any:
    """The given client, else the active ``distributed.Client``."""
    if client is not None:
        return client
    _, distributed = require_dask()
    try:
        return distributed.default_client()
    except ValueError as exc:
        raise DistributedError(
            "no active distributed.Client: start one (distributed.Client(LocalCluster()) or "
            "Client('tcp://scheduler:8786')) or pass client="
        ) from exc


def _as_array(value: Any) -> Any:
    da, _ = require_dask()
    if isinstance(value, da.Array):
        return value
    to_array = getattr(value, "to_dask_array", None)
    if to_array is not None:  # a Dask DataFrame of feature columns: rows with known lengths
        return to_array(lengths=True)
    raise GraphInputError(
        f"distributed data must be Dask arrays or a Dask DataFrame, got {type(value).__name__}"
    )


def aligned_arrays(data: Any, block_rows: int) -> tuple[Any, ...]:
    """One Dask array per model input, chunked on rows only, the row chunks cut on multiples
    of ``block_rows`` (the nearest to the given cuts), so that every partition holds whole
    blocks of the local walk.

    Args:
        data: a Dask array, DataFrame, or a tuple of arrays.
        block_rows: rows per calibration block.

    Returns:
        The re-chunked arrays (the same row chunks for all).
    """
    items = data if isinstance(data, tuple) else (data,)
    arrays = [_as_array(item) for item in items]
    if not arrays:
        raise GraphInputError("the calibration data is empty; give at least one array")
    for a in arrays:
        if a.ndim == 0 or any(np.isnan(c) for c in a.chunks[0]):
            raise GraphInputError(
                "distributed data needs rows on axis 0 with known chunk sizes (compute them "
                "with x.compute_chunk_sizes())"
            )
    total = arrays[0].shape[0]
    if any(a.shape[0] != total for a in arrays):
        raise GraphInputError(
            f"the inputs must all have the same number of rows, got {[a.shape for a in arrays]}"
        )
    cuts = np.cumsum(arrays[0].chunks[0])[:-1]
    aligned = sorted({round(int(c) / block_rows) * block_rows for c in cuts} - {0})
    bounds = [0, *(c for c in aligned if c < total), total]
    row_chunks = tuple(int(b - a) for a, b in itertools.pairwise(bounds) if b > a)
    return tuple(
        a.rechunk({0: row_chunks, **{axis: -1 for axis in range(1, a.ndim)}}) for a in arrays
    )
