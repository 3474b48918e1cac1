"""Shared fixtures: real search servers, each started once for the whole test session.

``cluster_url`` is one OpenSearch 2.19.6 node (or ``MILCO_OS_URL`` when set).
``server`` is parametrized over the servers of the engine contract (OpenSearch
2.19.6 and 3.3.2, Elasticsearch 9.2.4; a module may name others in a
``SERVERS`` list): each is a real node, started when the first test needs it
and stopped when pytest moves on to the next (tests are grouped by server), so
one node of each runs at a time. ``MILCO_OS_TEST_SERVERS`` (comma-separated ids)
narrows the servers collected; ``MILCO_OS_TEST_URLS`` (``id=url,...``) reuses
running servers instead of starting them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _cluster_helpers import start_cluster
from _shared import shared_path

# id -> (distribution, version)
CONTRACT_SERVERS = {
    "opensearch-2.19.6": ("opensearch", "2.19.6"),
    "opensearch-3.3.2": ("opensearch", "3.3.2"),
    "elasticsearch-9.2.4": ("elasticsearch", "9.2.4"),
}
ELASTICSEARCH_8 = {  # the lowest and highest 8.x supported
    "elasticsearch-8.11.3": ("elasticsearch", "8.11.3"),
    "elasticsearch-8.19.21": ("elasticsearch", "8.19.21"),
}


@dataclass(frozen=True)
class Server:
    """A running server of the test session."""

    id: str
    distribution: str
    version: str
    url: str
    start_seconds: float  # 0.0 when it was already running

    @property
    def engine(self) -> str:
        return self.distribution

    def settings(self, **overrides):
        from milco_os.engines.connection import ConnectionSettings

        return ConnectionSettings(url=self.url, engine=self.engine, **overrides)

    def open(self):
        from milco_os.engines import open_engine

        return open_engine(self.settings())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that take the ``shared_dir`` fixture carry the ``shared`` marker too, so
    ``-m shared`` selects every test that reads ``../shared``."""
    for item in items:
        if "shared_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" not in metafunc.fixturenames:
        return
    servers = getattr(metafunc.module, "SERVERS", list(CONTRACT_SERVERS))
    if chosen := os.environ.get("MILCO_OS_TEST_SERVERS"):
        servers = [s for s in servers if s in chosen.split(",")]
    metafunc.parametrize("server", servers, indirect=True, scope="session")


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """``MILCO_OS_URL`` when set, else a local OpenSearch 2.19.6 node for the session."""
    if url := os.environ.get("MILCO_OS_URL"):
        yield url
        return
    cluster, state = start_cluster(f"pytest-{os.getpid()}", "opensearch", "2.19.6", heap="768m")
    try:
        yield state.url
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """One real server per parameter (OpenSearch 2.19.6 shares ``cluster_url``'s node)."""
    server_id = request.param
    distribution, version = {**CONTRACT_SERVERS, **ELASTICSEARCH_8}[server_id]
    given = dict(item.split("=", 1) for item in
                 filter(None, os.environ.get("MILCO_OS_TEST_URLS", "").split(",")))
    if server_id in given or server_id == "opensearch-2.19.6":
        url = given.get(server_id) or request.getfixturevalue("cluster_url")
        yield Server(server_id, distribution, version, url, 0.0)
        return
    started = time.monotonic()
    cluster, state = start_cluster(f"pytest-{server_id}-{os.getpid()}", distribution, version,
                                   heap="768m")
    seconds = time.monotonic() - started
    print(f"\n{server_id}: started in {seconds:.1f}s")
    try:
        yield Server(server_id, distribution, version, state.url, seconds)
    finally:
        cluster.destroy()


@pytest.fixture
def server_index(server: Server) -> Iterator[str]:
    """A unique index name on ``server``, deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    server.open().delete_index(name)


@pytest.fixture(scope="session")
def os_client(cluster_url: str):
    """An opensearch-py client for the session cluster."""
    from milco_os.engines.connection import ConnectionSettings

    return ConnectionSettings(url=cluster_url).client()


@pytest.fixture
def index_name(os_client) -> Iterator[str]:
    """A unique index name, deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    os_client.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository; tests that need it skip when it is absent."""
    return shared_path()
