"""The ingest pipeline against a real OpenSearch: counts, bad input, retries, resume, shards."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _ingest_helpers import write_corpus

from milco_os.core.errors import IncompatibleIndexError
from milco_os.engines import BulkFailure, TransientEngineError, open_engine
from milco_os.engines.base import Engine
from milco_os.engines.connection import ConnectionSettings
from milco_os.index.spec import BatchSizes, IngestSpec
from milco_os.pipeline.ingest import IngestError, Ingestor, engine_id
from milco_os.text.corpus import read_files

pytestmark = pytest.mark.cluster


@pytest.fixture
def engine(cluster_url: str) -> Engine:
    return open_engine(ConnectionSettings(url=cluster_url))


def spec_for(index: str, bulk_docs: int = 7) -> IngestSpec:
    """Pre-encoded vectors indexed exactly (``prune: none``)."""
    return IngestSpec(index=index, batch=BatchSizes(encode=5, bulk_docs=bulk_docs), prune="none")


class FlakyEngine:
    """The real engine, with faults injected into bulk requests (a proxy, not a mock)."""

    def __init__(self, engine: Engine, fail_calls: Sequence[int] = (), die_after: int | None = None,
                 reject_once: set[str] | None = None) -> None:
        self.engine, self.fail_calls, self.die_after = engine, set(fail_calls), die_after
        self.reject_once = set(reject_once or ())
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def bulk_send(self, index: str, documents):
        self.calls += 1
        if self.calls in self.fail_calls or (self.die_after and self.calls > self.die_after):
            raise TransientEngineError("injected 503")
        rejected = [d for d in documents if d.id in self.reject_once]
        self.reject_once -= {d.id for d in rejected}
        kept = [d for d in documents if d not in rejected]
        return self.engine.bulk_send(index, kept) + [
            BulkFailure(d.id, 429, "injected es_rejected_execution_exception") for d in rejected]


def run(engine, spec: IngestSpec, path: Path, **kwargs):
    return Ingestor(engine, spec, progress=False, max_wait=0.01, **kwargs).run(read_files([path]))


def test_ingest_writes_every_document_with_its_vector(engine, index_name, tmp_path) -> None:
    rows = write_corpus(tmp_path / "c.jsonl", 23)
    report = run(engine, spec_for(index_name), tmp_path / "c.jsonl")
    assert (report.read, report.indexed, report.failed, report.skipped) == (23, 23, 0, 0)
    assert engine.count(index_name) == 23
    stored = engine.get_sources(index_name, [engine_id("doc-3", 0)])[engine_id("doc-3", 0)]
    assert stored["doc_id"] == "doc-3" and stored["passage"] == 0
    assert stored["pivot"] == pytest.approx(rows[3]["pivot"])
    assert stored["echo"] == {"▁x%2Ey": 0.5}  # dots escaped in feature names
    assert report.term_stats()["pivot"]["mean"] == 20
    assert engine.meta(index_name)["pruning"] == "none"


def test_bad_records_are_reported_and_good_ones_written(engine, index_name, tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    lines = [
        {"id": "good-1", "text": "x", "pivot": {"a": 1.0}},
        {"text": "no id", "pivot": {"a": 1.0}},
        {"id": "nan", "text": "x", "pivot": {"a": float("nan")}},
        {"id": "empty", "text": "   "},
        {"id": "good-2", "text": "x", "pivot": {"b": 2.0, "zero": 0.0}},
    ]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n{not json\n")
    errors_out = tmp_path / "errors.jsonl"
    report = run(engine, spec_for(index_name), path, error_log=errors_out)
    assert report.read == 6 and report.indexed == 2 and report.failed == 4
    assert report.invalid == 4  # no id, NaN weight, empty text, broken JSON
    text = "\n".join(report.errors)
    assert "record 1" in text and "'id'" in text and "missing document id" in text
    assert "'nan'" in text and "'a'" in text  # the document and the term at fault
    assert "'empty'" in text and "empty text" in text
    assert "line 6" in text
    assert len(errors_out.read_text().splitlines()) == 4
    assert engine.count(index_name) == 2
    stored = engine.get_sources(index_name, ["good-2#0"])["good-2#0"]
    assert stored["pivot"] == {"b": 2.0}  # the zero weight was dropped, not sent


def test_transient_failures_are_retried(engine, index_name, tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 20)
    flaky = FlakyEngine(engine, fail_calls=[1, 2, 4], reject_once={"doc-5#0", "doc-11#0"})
    report = run(flaky, spec_for(index_name), tmp_path / "c.jsonl")
    assert (report.indexed, report.failed) == (20, 0)
    assert report.retries >= 4  # three whole requests and one round of two refused documents
    assert engine.count(index_name) == 20


def test_resume_after_interrupted_ingest(engine, index_name, tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 40)
    spec = spec_for(index_name)
    dying = FlakyEngine(engine, die_after=3)  # the cluster goes away after 3 bulk requests
    with pytest.raises(IngestError) as stopped:
        run(dying, spec, tmp_path / "c.jsonl", max_attempts=2)
    first = stopped.value.report
    assert first.indexed == 3 * 7
    engine.refresh(index_name)
    assert engine.count(index_name) == first.indexed
    report = run(engine, spec, tmp_path / "c.jsonl", resume=True)
    assert report.skipped == first.indexed
    assert report.indexed == 40 - first.indexed
    assert engine.count(index_name) == 40  # everything, and no duplicates


def test_rerun_overwrites_instead_of_duplicating(engine, index_name, tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 12)
    spec = spec_for(index_name)
    run(engine, spec, tmp_path / "c.jsonl")
    run(engine, spec, tmp_path / "c.jsonl")
    assert engine.count(index_name) == 12


def test_shards_cover_the_corpus_exactly_once(engine, index_name, tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 25)
    spec = spec_for(index_name)
    reports = [run(engine, spec, tmp_path / "c.jsonl", shard_of=(i, 3)) for i in range(3)]
    assert [r.read for r in reports] == [9, 8, 8]
    assert sum(r.indexed for r in reports) == 25
    assert engine.count(index_name) == 25


def test_index_built_by_another_model_is_refused(engine, index_name, tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 3)
    run(engine, IngestSpec(index=index_name, model="model-a"), tmp_path / "c.jsonl")
    with pytest.raises(IncompatibleIndexError, match="model-a"):
        run(engine, IngestSpec(index=index_name, model="model-b"), tmp_path / "c.jsonl")
