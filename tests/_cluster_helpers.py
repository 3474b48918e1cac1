"""Starting local clusters of their own for tests."""

from __future__ import annotations

from typing import Any


def start_cluster(name: str, distribution: str, version: str | None, **kwargs: Any):
    """``(cluster, state)`` of a fresh local cluster (data of an earlier run under ``name``
    deleted); ``kwargs`` go to :meth:`LocalCluster.up`."""
    from milco_os.devcluster import LocalCluster
    from milco_os.devcluster import distribution as make

    cluster = LocalCluster(name=name)
    state = cluster.up(dist=make(distribution, version), reset=True, **kwargs)
    return cluster, state
