"""One Dask LocalCluster (2 worker processes on 127.0.0.1, dashboard off) per test module."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
    with cluster, distributed.Client(cluster) as dask_client:
        yield dask_client
