"""Bulk requests: documents serialised once, packed by count and bytes apart from sending."""

from __future__ import annotations

import json

import pytest
from _ingest_helpers import write_corpus

from milco_os.engines.base import BulkDocument
from milco_os.engines.bulk import Uploader, chunks
from milco_os.engines.local import LocalEngine
from milco_os.index.spec import BatchSizes, IngestSpec
from milco_os.pipeline.ingest import Ingestor
from milco_os.text.corpus import read_files


def documents(n: int, text: str = "x") -> list[BulkDocument]:
    return [BulkDocument.of("idx", f"d{i}#0", {"doc_id": f"d{i}", "text": text})
            for i in range(n)]


def test_the_lines_are_the_bulk_body_of_the_document() -> None:
    [doc] = documents(1, "北京")
    action, source, end = doc.lines.decode().split("\n")
    assert json.loads(action) == {"index": {"_index": "idx", "_id": "d0#0"}}
    assert json.loads(source) == doc.source and end == ""
    with pytest.raises(ValueError):
        BulkDocument.of("idx", "nan#0", {"pivot": {"a": float("nan")}})


def test_chunks_hold_at_most_the_documents_and_bytes_allowed() -> None:
    docs = documents(10, "y" * 50)
    size = len(docs[0].lines)
    packed = list(chunks(docs, max_docs=4, max_bytes=3 * size))
    assert [len(c) for c in packed] == [3, 3, 3, 1]
    assert [d for c in packed for d in c] == docs  # in order, none lost
    assert [len(c) for c in chunks(docs, max_docs=4, max_bytes=10)] == [1] * 10  # one alone


def test_the_uploader_stops_at_the_first_failure_and_drains_the_rest() -> None:
    sent: list[int] = []

    def flush(chunk):
        if len(sent) == 2:
            raise RuntimeError("cluster gone")
        sent.append(len(chunk))

    uploader = Uploader(flush, max_docs=2, max_bytes=10**6)
    for _ in range(5):
        uploader.put(documents(3))
    uploader.close()
    assert sent == [2, 2] and str(uploader.error) == "cluster gone"


def test_an_ingest_serialises_each_document_once(tmp_path, monkeypatch) -> None:
    calls = []
    real = BulkDocument.of.__func__

    def counting(cls, index, doc_id, source):
        calls.append(doc_id)
        return real(cls, index, doc_id, source)

    monkeypatch.setattr(BulkDocument, "of", classmethod(counting))
    write_corpus(tmp_path / "c.jsonl", 30)
    report = Ingestor(LocalEngine(tmp_path / "e"), IngestSpec(
        index="once", batch=BatchSizes(encode=7, bulk_docs=4)), progress=False).run(
        read_files([tmp_path / "c.jsonl"]))
    assert report.indexed == 30 and sorted(calls) == sorted(f"doc-{i}#0" for i in range(30))
