"""Faults survived, on the project's own local clusters (loopback only, bounded loops).

- a data node SIGKILLed in the middle of a 20,000-document ingest into a 3-node cluster,
  on OpenSearch 2.19.6, OpenSearch 3.3.2 and Elasticsearch 9.2.4;
- 429 rejections forced with a one-thread, one-slot write pool;
- search while a node is down.

Run alone with ``pytest -m faults``; each test prints its figures (documents in,
documents found, retries, time to recover).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _cluster_helpers import start_cluster
from _ingest_helpers import write_corpus

from milco_os.core.errors import IndexNotFoundError
from milco_os.devcluster import LocalCluster
from milco_os.engines import TransientEngineError, open_engine
from milco_os.engines.connection import ConnectionSettings
from milco_os.engines.query import SparseQuery
from milco_os.index.spec import BatchSizes, EngineSettings, IngestSpec
from milco_os.pipeline.ingest import Ingestor, engine_id
from milco_os.text.corpus import read_files
from milco_os.vectors.sparse import SparseVector, SparseView

pytestmark = [pytest.mark.faults, pytest.mark.cluster]


FAULT_SERVERS = {"opensearch-2.19.6": ("opensearch", "2.19.6"),
                 "opensearch-3.3.2": ("opensearch", "3.3.2"),
                 "elasticsearch-9.2.4": ("elasticsearch", "9.2.4")}


@pytest.fixture(scope="module", params=list(FAULT_SERVERS))
def three_nodes(request) -> Iterator[tuple[str, LocalCluster]]:
    distribution, version = FAULT_SERVERS[request.param]
    started = time.monotonic()
    cluster, _ = start_cluster(f"faults3-{distribution}-{os.getpid()}", distribution, version,
                               nodes=3, heap="384m")
    print(f"\n{request.param}: 3 nodes started in {time.monotonic() - started:.1f}s")
    try:
        yield distribution, cluster
    finally:
        cluster.destroy()


def count_so_far(engine, index: str) -> int:
    """Documents in ``index`` now; 0 while it is missing or its new shards start (503).
    Each request may reach another node, and a node that has not yet applied the new
    cluster state answers 404 for an index another one just reported."""
    try:
        return engine.count(index)
    except (IndexNotFoundError, TransientEngineError):
        return 0


def test_ingest_survives_a_killed_data_node(three_nodes, tmp_path: Path) -> None:
    distribution, cluster = three_nodes
    total = 20_000
    rows = write_corpus(tmp_path / "c.jsonl", total, seed=7)
    state = cluster.state()
    engine = open_engine(ConnectionSettings(url=",".join(state.urls), engine=distribution))
    spec = IngestSpec(index="faults-kill", engine=EngineSettings(shards=3, replicas=1),
                      batch=BatchSizes(encode=200, bulk_docs=200))
    ingestor = Ingestor(engine, spec, progress=False, max_attempts=12, max_wait=5.0)
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(
        report=ingestor.run(read_files([tmp_path / "c.jsonl"]))))
    start = time.monotonic()
    worker.start()
    victim = state.nodes[1]
    while worker.is_alive() and time.monotonic() - start < 300:
        if count_so_far(engine, spec.index) >= total // 4:
            break
        time.sleep(0.2)
    assert worker.is_alive(), "the ingest finished before the node could be killed"
    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    worker.join(timeout=900)
    assert not worker.is_alive()
    report = outcome["report"]
    engine.refresh(spec.index)
    ids = [engine_id(r["id"], 0) for r in rows]
    found = set()
    for i in range(0, total, 1000):
        found |= engine.existing_ids(spec.index, ids[i:i + 1000])
    print(f"\n{distribution} kill a node: documents in {total}, found {len(found)}, indexed "
          f"{report.indexed}, failed {report.failed}, retries {report.retries}, "
          f"finished {time.monotonic() - killed_at:.1f}s after the kill")
    assert (report.indexed, report.failed) == (total, 0)
    assert engine.count(spec.index) == total and len(found) == total
    for row in rows[::4000]:  # spot-check stored vectors
        stored = engine.get_sources(spec.index, [engine_id(row["id"], 0)])
        assert stored[engine_id(row["id"], 0)]["pivot"] == pytest.approx(row["pivot"], rel=0.005)

    # Search while the node is down: the replicas answer.
    alive = open_engine(ConnectionSettings(url=",".join(cluster.hosts()), engine=distribution))
    hits = alive.search(spec.index, SparseQuery(SparseVector(SparseView.from_pairs(
        [(17, "t17", 1.0)]))), k=5)
    print(f"search with a node down: {len(hits)} hits")
    assert hits and all(h.score > 0 for h in hits)


def test_forced_429s_slow_ingest_but_lose_nothing(tmp_path: Path) -> None:
    cluster, state = start_cluster(f"faults429-{os.getpid()}", "opensearch", "2.19.6",
                                   heap="384m", settings={"thread_pool.write.size": 1,
                                                          "thread_pool.write.queue_size": 1})
    try:
        total = 3000
        write_corpus(tmp_path / "c.jsonl", total, seed=3)
        engine = open_engine(ConnectionSettings(url=state.url))
        spec = IngestSpec(index="faults-429", engine=EngineSettings(shards=6),
                          batch=BatchSizes(encode=300, bulk_docs=300))
        start = time.monotonic()
        report = Ingestor(engine, spec, progress=False, max_attempts=20, max_wait=2.0).run(
            read_files([tmp_path / "c.jsonl"]))
        print(f"\nforced 429s: documents in {total}, indexed {report.indexed}, "
              f"retries {report.retries}, {time.monotonic() - start:.1f}s")
        assert report.retries > 0  # the pool did refuse work
        assert (report.indexed, report.failed) == (total, 0)
        assert engine.count(spec.index) == total
    finally:
        cluster.destroy()
