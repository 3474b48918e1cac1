"""Faults survived, on the project's own local clusters (loopback only, bounded loops).

- a data node SIGKILLed in the middle of a 20,000-document ingest;
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
from _ingest_helpers import write_corpus

from milco_os.connection import ConnectionSettings
from milco_os.corpus import read_files
from milco_os.devcluster import LocalCluster
from milco_os.engines import open_engine
from milco_os.ingest import Ingestor, engine_id
from milco_os.spec import BatchSizes, EngineSettings, IngestSpec

pytestmark = [pytest.mark.faults, pytest.mark.cluster]


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[LocalCluster]:
    cluster = LocalCluster(name=f"faults3-{os.getpid()}")
    cluster.up(nodes=3, heap="384m")
    try:
        yield cluster
    finally:
        cluster.down()


def test_ingest_survives_a_killed_data_node(three_nodes: LocalCluster, tmp_path: Path) -> None:
    total = 20_000
    rows = write_corpus(tmp_path / "c.jsonl", total, seed=7)
    state = three_nodes.state()
    engine = open_engine(ConnectionSettings(url=",".join(state.urls)))
    spec = IngestSpec(index="faults-kill", engine=EngineSettings(shards=3, replicas=1),
                      batch=BatchSizes(encode=200, bulk_docs=200))
    ingestor = Ingestor(engine, spec, progress=False, max_attempts=12, max_wait=5.0)
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(
        report=ingestor.run(read_files([tmp_path / "c.jsonl"]))))
    start = time.monotonic()
    worker.start()
    victim = state.nodes[1]
    while worker.is_alive() and time.monotonic() - start < 120:
        if engine.index_exists(spec.index) and engine.count(spec.index) >= total // 4:
            break
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    worker.join(timeout=600)
    assert not worker.is_alive()
    report = outcome["report"]
    engine.refresh(spec.index)
    ids = [engine_id(r["id"], 0) for r in rows]
    found = set()
    for i in range(0, total, 1000):
        found |= engine.existing_ids(spec.index, ids[i:i + 1000])
    print(f"\nkill a node: documents in {total}, found {len(found)}, indexed {report.indexed}, "
          f"failed {report.failed}, retries {report.retries}, "
          f"finished {time.monotonic() - killed_at:.1f}s after the kill")
    assert (report.indexed, report.failed) == (total, 0)
    assert engine.count(spec.index) == total and len(found) == total
    for row in rows[::4000]:  # spot-check stored vectors
        stored = engine.get_sources(spec.index, [engine_id(row["id"], 0)])
        assert stored[engine_id(row["id"], 0)]["pivot"] == pytest.approx(row["pivot"])

    # Search while the node is down: the replicas answer.
    client = ConnectionSettings(url=",".join(three_nodes.hosts())).client()
    answer = client.search(index=spec.index, body={
        "query": {"rank_feature": {"field": "pivot.t17", "linear": {}}}, "size": 5})
    print(f"search with a node down: shards {answer['_shards']}")
    assert answer["hits"]["hits"]
    assert answer["_shards"]["failed"] == 0


def test_forced_429s_slow_ingest_but_lose_nothing(tmp_path: Path) -> None:
    cluster = LocalCluster(name=f"faults429-{os.getpid()}")
    state = cluster.up(nodes=1, heap="384m", settings={
        "thread_pool.write.size": 1, "thread_pool.write.queue_size": 1})
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
        cluster.down()
