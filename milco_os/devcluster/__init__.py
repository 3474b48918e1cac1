"""A real local search cluster for tests, CI and users without one (``milco-os cluster``).

Without Docker, the servers are assembled from what their makers publish to
Maven Central (each ``integ-test-zip``, plus OpenSearch's ``mapper-extras`` and
``analysis-common`` module jars), verified, cached under ``~/.cache/milco-os``,
and run on 127.0.0.1 with a JDK found on the machine
(:mod:`~milco_os.devcluster.java`). One class per server
(:mod:`~milco_os.devcluster.distributions`): OpenSearch 2.x, OpenSearch 3.x,
Elasticsearch 8.x/9.x.

This package is a tool beside the library, not part of it: the library reaches
a local cluster only through the hook :func:`endpoint`, which the command line
installs with :func:`milco_os.engines.connection.use_local_cluster`.
"""

from __future__ import annotations

import os

from milco_os.devcluster.cluster import LocalCluster, check_heap, check_port
from milco_os.devcluster.distributions import (
    DISTRIBUTIONS,
    Distribution,
    Elasticsearch,
    OpenSearch2,
    OpenSearch3,
    distribution,
)
from milco_os.devcluster.errors import ClusterError, ClusterOptionError
from milco_os.devcluster.nodes import ClusterState, NodeState
from milco_os.engines.connection import ClusterUnreachableError, LocalEndpoint

__all__ = [
    "DISTRIBUTIONS",
    "ClusterError",
    "ClusterOptionError",
    "ClusterState",
    "Distribution",
    "Elasticsearch",
    "LocalCluster",
    "NodeState",
    "OpenSearch2",
    "OpenSearch3",
    "check_heap",
    "check_port",
    "distribution",
    "endpoint",
]


def endpoint() -> LocalEndpoint | None:
    """The cluster ``milco-os cluster up`` started (``MILCO_OS_CLUSTER`` names it, default
    ``default``): None when none was started; an error when it was but does not answer,
    or when ``MILCO_OS_CLUSTER`` names one that is not running (so that nothing silently
    goes elsewhere)."""
    named = os.environ.get("MILCO_OS_CLUSTER", "").strip()
    cluster = LocalCluster(named or "default")
    state = cluster.state()
    if state is None:
        if named:  # a cluster asked for by name: never silently the local engine instead
            raise ClusterUnreachableError(
                f"MILCO_OS_CLUSTER names the local cluster {named!r}, which is not running: "
                f"start it (`milco-os cluster up --name {named}`), or unset MILCO_OS_CLUSTER, "
                "or pass --url or --engine local")
        return None
    hosts = cluster.hosts()
    if not hosts:
        raise ClusterUnreachableError(
            f"the local cluster {cluster.name!r} (from `milco-os cluster up`) does not answer "
            f"at {state.url}: start it again, or pass --url or --engine local")
    return LocalEndpoint(urls=tuple(hosts), engine=state.distribution, user=state.user,
                         password_file=state.password_file, ca_file=state.ca_file)
