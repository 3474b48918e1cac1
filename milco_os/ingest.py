"""Bulk ingestion: corpus records -> passages -> sparse vectors -> engine documents.

The pipeline streams the corpus (never holding it all), encodes passages in
batches on the calling thread, and uploads on a background thread so that
encoding and bulk requests overlap. Bulk requests are bounded by documents and
bytes and retried with exponential backoff and jitter on 429/5xx/timeouts;
documents the engine refuses are collected with their reason. Engine ids are
deterministic (``<doc_id>#<passage>``), so a re-run overwrites instead of
duplicating and ``resume=True`` skips what is already indexed.

With a model, pass ``SparseEncoder.from_pretrained(spec.model)`` as the
encoder; records that carry pre-encoded vectors need none:

>>> import tempfile
>>> from milco_os.corpus import to_document, FieldMap
>>> from milco_os.engines import open_engine
>>> engine = open_engine(None, "local", local_path=tempfile.mkdtemp())
>>> records = [to_document({"id": "d1", "text": "dogs", "pivot": {"dog": 1.2}}, 0, FieldMap())]
>>> report = Ingestor(engine, IngestSpec(index="demo"), progress=False).run(records)
>>> report.read, report.indexed, report.failed
(1, 1, 0)
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from tqdm.auto import tqdm

from milco_os.corpus import Document, Record, RecordError, read_files, read_hub, shard
from milco_os.documents import build_source
from milco_os.engines.base import BulkFailure, Engine, TransientEngineError
from milco_os.passages import PassageSplitter
from milco_os.sparse import VIEWS, SparseVector, SparseView
from milco_os.spec import IngestSpec

log = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 20


class IngestError(RuntimeError):
    """Ingestion stopped (e.g. the cluster stayed unreachable); ``report`` says how far it got."""

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report


def engine_id(doc_id: str, passage: int) -> str:
    """The deterministic engine ``_id`` of passage ``passage`` of document ``doc_id``."""
    return f"{doc_id}#{passage}"


@dataclass
class IngestReport:
    """Counts of one ingest run. Units: ``read``/``invalid`` count source records;
    ``passages``/``encoded``/``indexed``/``skipped``/``failed`` count engine documents
    (one per passage; ``failed`` includes invalid records)."""

    index: str
    read: int = 0
    invalid: int = 0
    passages: int = 0
    encoded: int = 0
    indexed: int = 0
    skipped: int = 0
    failed: int = 0
    retries: int = 0  # bulk requests or documents sent again after a transient refusal
    errors: list[str] = field(default_factory=list)
    terms: dict[str, list[int]] = field(default_factory=lambda: {v: [] for v in VIEWS})
    index_bytes: int | None = None
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_error(self, message: str, sink: TextIO | None) -> None:
        """Count one failed document; keep the first reasons; log all of them to ``sink``."""
        with self._lock:  # the encoder and the uploader thread both report failures
            self.failed += 1
            if len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.append(message)
            if sink is not None:
                sink.write(json.dumps({"error": message}, ensure_ascii=False) + "\n")

    def term_stats(self) -> dict[str, dict[str, float]]:
        """Terms per indexed document, per view: mean and 95th percentile."""
        return {view: {"mean": float(np.mean(n)), "p95": float(np.percentile(n, 95))}
                for view, n in self.terms.items() if n}

    def summary(self) -> dict[str, Any]:
        rate = self.indexed / self.seconds if self.seconds else 0.0
        return {
            "index": self.index, "read": self.read, "invalid": self.invalid,
            "passages": self.passages, "encoded": self.encoded, "indexed": self.indexed,
            "skipped": self.skipped, "failed": self.failed, "retries": self.retries,
            "terms_per_doc": self.term_stats(),
            "index_bytes": self.index_bytes, "seconds": round(self.seconds, 2),
            "docs_per_s": round(rate, 1), "errors": self.errors,
        }


@dataclass(frozen=True)
class _Passage:
    id: str
    doc: Document
    number: int
    text: str


def read_source(spec: IngestSpec) -> Iterator[Record]:
    """The records of the spec's source (local files or a hub dataset)."""
    if spec.source.files:
        return read_files(spec.source.files, spec.source.fields)
    if spec.source.hub:
        return read_hub(spec.source.hub, spec.source.config, spec.source.split,
                        spec.source.fields)
    raise ValueError(f"ingest spec for {spec.index!r} names no source: give files or hub "
                     "(or --input FILE)")


class Ingestor:
    """Build (or extend) one index from a stream of records."""

    def __init__(
        self,
        engine: Engine,
        spec: IngestSpec,
        encoder: Any | None = None,
        pruning: Any | None = None,
        *,
        resume: bool = False,
        shard_of: tuple[int, int] = (0, 1),
        progress: bool = True,
        error_log: str | Path | None = None,
        max_attempts: int = 8,
        max_wait: float = 30.0,
    ) -> None:
        self.engine, self.spec, self.encoder, self.pruning = engine, spec, encoder, pruning
        self.resume, self.shard_of, self.progress = resume, shard_of, progress
        self.error_log = Path(error_log) if error_log else None
        self.retrying = Retrying(
            retry=retry_if_exception_type(TransientEngineError),
            wait=wait_random_exponential(multiplier=0.5, max=max_wait),
            stop=stop_after_attempt(max_attempts), reraise=True,
        )
        self.max_attempts, self.max_wait = max_attempts, max_wait
        tokenizer = getattr(encoder, "tokenizer", None)
        if spec.passages.window and tokenizer is None:
            raise ValueError("passage splitting needs the model's tokenizer (give a model)")
        self.splitter = PassageSplitter(tokenizer, spec.passages.window, spec.passages.stride) \
            if spec.passages.window else None

    # ------------------------------------------------------------------ driver

    def run(self, records: Iterable[Record]) -> IngestReport:
        report = IngestReport(self.spec.index)
        start = time.monotonic()
        try:
            self.retrying(self._ensure_index)
        except TransientEngineError as exc:
            raise IngestError(f"cannot reach the cluster ({self.max_attempts} attempts): {exc}",
                              report) from exc
        sink = self.error_log.open("a", encoding="utf-8") if self.error_log else None
        uploader = _Uploader(self, report, sink)
        bar = tqdm(desc=f"ingest {self.spec.index}", unit="doc", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            for batch in self._batches(shard(records, *self.shard_of), report, sink):
                sources = self._encode(batch, report, sink)
                uploader.put(sources)
                bar.update(len(batch))
                bar.set_postfix(indexed=report.indexed, skipped=report.skipped,
                                failed=report.failed, refresh=False)
        finally:
            uploader.close()
            bar.close()
            if sink is not None:
                sink.close()
            report.seconds = time.monotonic() - start
        if uploader.error is not None:
            raise IngestError(f"ingest of {self.spec.index!r} stopped: {uploader.error}. "
                              "Fix the cause and re-run with --resume.", report) \
                from uploader.error
        self.engine.refresh(self.spec.index)
        report.index_bytes = self.engine.index_info(self.spec.index).get("store_bytes")
        return report

    def _ensure_index(self) -> None:
        index, spec = self.spec.index, self.spec
        if self.engine.health() == "red":  # writes would hang, then fail shard by shard
            raise IngestError("cluster health is red: some primary shards are unassigned; "
                              "fix the cluster (GET _cluster/allocation/explain) and re-run",
                              IngestReport(index))
        if not self.engine.index_exists(index):
            meta = spec.describe()
            self.engine.create_index(index, meta=meta, shards=spec.engine.shards,
                                     replicas=spec.engine.replicas,
                                     refresh_interval=spec.engine.refresh_interval, exist_ok=True)
            return
        recorded = self.engine.meta(index).get("model")
        if spec.model and recorded and recorded != spec.model:
            raise ValueError(f"index {index!r} holds vectors of model {recorded!r}, not "
                             f"{spec.model!r}: mixing models gives meaningless scores. "
                             "Use another index name or delete this one first.")

    # ------------------------------------------------------------------ stages

    def _batches(self, records: Iterable[Record], report: IngestReport, sink: TextIO | None
                 ) -> Iterator[list[_Passage]]:
        batch: list[_Passage] = []
        in_batch: dict[str, int] = {}  # id -> position, to catch ids repeated in one batch
        size = self.spec.batch.encode
        for record in records:
            report.read += 1
            if isinstance(record, Document) and record.id in in_batch:
                record = RecordError(record.position, record.id, "id", "duplicate id: also "
                                     f"record {in_batch[record.id]}, which is kept")
            if isinstance(record, RecordError):
                report.invalid += 1
                report.record_error(str(record), sink)
                continue
            in_batch[record.id] = record.position
            texts = self.splitter(record.text) if self.splitter and not record.vectors \
                else [record.text]
            for number, text in enumerate(texts):
                batch.append(_Passage(engine_id(record.id, number), record, number, text))
            report.passages += len(texts)
            if len(batch) >= size:
                yield from self._unseen(batch, report)
                batch, in_batch = [], {}
        if batch:
            yield from self._unseen(batch, report)

    def _unseen(self, batch: list[_Passage], report: IngestReport) -> Iterator[list[_Passage]]:
        if self.resume:
            existing = self.engine.existing_ids(self.spec.index, [p.id for p in batch])
            report.skipped += len(existing)
            batch = [p for p in batch if p.id not in existing]
        if batch:
            yield batch

    def _encode(self, batch: list[_Passage], report: IngestReport, sink: TextIO | None
                ) -> list[tuple[str, dict[str, Any], int]]:
        vectors = self._vectors(batch, report, sink)
        sources = []
        for passage, vector in zip(batch, vectors, strict=True):
            if vector is None:
                continue
            if self.pruning is not None:
                vector = self.pruning.apply(vector)
            vector = SparseVector(*(vector.view(v) if v in self.spec.views else SparseView.empty()
                                    for v in VIEWS))
            doc = passage.doc
            try:
                source = build_source(doc.id, passage.number, vector, title=doc.title,
                                      text=passage.text or None, lang=doc.lang)
            except ValueError as exc:
                report.record_error(f"document {doc.id!r} passage {passage.number}: {exc}", sink)
                continue
            for view in VIEWS:
                report.terms[view].append(len(source[view]))
            sources.append((passage.id, source, _estimated_bytes(source)))
        return sources

    def _vectors(self, batch: list[_Passage], report: IngestReport, sink: TextIO | None
                 ) -> list[SparseVector | None]:
        vectors: list[SparseVector | None] = [None] * len(batch)
        todo = []
        for i, passage in enumerate(batch):
            if passage.doc.vectors is not None:
                vectors[i] = SparseVector.from_dict(passage.doc.vectors)
            else:
                todo.append(i)
        if todo and self.encoder is None:
            for i in todo:
                report.record_error(f"document {batch[i].doc.id!r}: no pre-encoded pivot/echo "
                                    "and no model given to encode its text", sink)
            return vectors
        if todo:
            texts = [batch[i].text for i in todo]
            for i, vector in zip(todo, self._encode_texts(texts), strict=True):
                vectors[i] = vector
        report.encoded += sum(v is not None for v in vectors)
        return vectors

    def _encode_texts(self, texts: Sequence[str]) -> list[SparseVector]:
        return self.encoder.encode(list(texts), kind="document", max_length=self.spec.max_length,
                                   batch_size=self.spec.batch.encode)

    # ------------------------------------------------------------------ upload

    def send(self, docs: list[tuple[str, dict[str, Any]]], report: IngestReport
             ) -> list[BulkFailure]:
        """One bulk request, retried as a whole on transient errors, then item by item
        for documents refused with 429 (queue full) or 5xx (e.g. a shard moving)."""
        pending: list[tuple[str, dict[str, Any]]] = docs
        failures: list[BulkFailure] = []
        for attempt in range(self.max_attempts):
            failed = self.retrying(self.engine.bulk_index, self.spec.index, pending)
            report.retries += self.retrying.statistics.get("attempt_number", 1) - 1
            retry = {f.id: f for f in failed if _retryable(f.status)}
            failures.extend(f for f in failed if not _retryable(f.status))
            pending = [d for d in pending if d[0] in retry]
            if not pending:
                return failures
            if attempt + 1 == self.max_attempts:
                break
            report.retries += 1
            time.sleep(min(0.5 * 2**attempt, self.max_wait) * np.random.uniform(0.5, 1.0))
        return failures + [BulkFailure(i, retry[i].status, f"still refused after "
                                       f"{self.max_attempts} attempts: {retry[i].reason}")
                           for i, _ in pending]


class _Uploader:
    """A background thread that packs sources into bulk requests and sends them."""

    def __init__(self, ingestor: Ingestor, report: IngestReport, sink: TextIO | None) -> None:
        self.ingestor, self.report, self.sink = ingestor, report, sink
        self.queue: queue.Queue[list | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="milco-os-bulk", daemon=True)
        self.thread.start()

    def put(self, sources: list[tuple[str, dict[str, Any], int]]) -> None:
        if self.error is not None:
            raise IngestError(f"bulk upload failed: {self.error}", self.report) from self.error
        self.queue.put(sources)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _loop(self) -> None:
        limits = self.ingestor.spec.batch
        chunk: list[tuple[str, dict[str, Any]]] = []
        size = 0
        while (sources := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so the producer is never blocked on a dead consumer
            for doc_id, source, nbytes in sources:
                if chunk and (len(chunk) >= limits.bulk_docs or size + nbytes > limits.bulk_bytes):
                    self._flush(chunk)
                    chunk, size = [], 0
                chunk.append((doc_id, source))
                size += nbytes
        if chunk and self.error is None:
            self._flush(chunk)

    def _flush(self, chunk: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            failures = self.ingestor.send(chunk, self.report)
        except Exception as exc:  # retries exhausted, or a bug: stop ingesting, keep counts
            self.error = exc
            return
        self.report.indexed += len(chunk) - len(failures)
        for failure in failures:
            self.report.record_error(f"engine refused {failure.id!r} ({failure.status}): "
                                     f"{failure.reason}", self.sink)


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _estimated_bytes(source: dict[str, Any]) -> int:
    """Approximate JSON size of a document, without serialising it twice.

    Each feature costs its key plus ~14 bytes of quotes, colon and a float.
    """
    features = sum(len(k) + 14 for view in VIEWS for k in source[view])
    text = sum(len(str(source.get(k) or "")) for k in ("title", "text", "doc_id"))
    return features + 2 * text + 64
