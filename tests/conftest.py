"""Shared fixtures: a real OpenSearch node for the whole test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """``MILCO_OS_URL`` when set, else a local node started once for the session."""
    if url := os.environ.get("MILCO_OS_URL"):
        yield url
        return
    from milco_os.cluster import LocalCluster

    cluster = LocalCluster(name=f"pytest-{os.getpid()}")
    state = cluster.up(nodes=1, heap="768m")
    try:
        yield state.url
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def os_client(cluster_url: str):
    """An opensearch-py client for the session cluster."""
    from milco_os.connection import ConnectionSettings

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
    if not SHARED.is_dir():
        pytest.skip("../shared is not present on this machine")
    return SHARED
