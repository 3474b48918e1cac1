"""Bulk ingestion: corpus records -> passages -> sparse vectors -> engine documents.

The pipeline streams the corpus (never holding it all), encodes passages in
batches on the calling thread, serialises each engine document once, and hands
them to :mod:`milco_os.engines.bulk`, whose background thread packs requests
(bounded by documents and by the exact bytes of the body sent) and sends them
under :class:`~milco_os.core.retry.RetryPolicy` while encoding goes on; documents the
engine refuses (or a request it refuses whole, which is split until the refused
document is found) are collected with their reason, so a bad record costs only
itself. Engine ids are deterministic
(``<doc_id>#<passage>``), so a re-run overwrites instead of duplicating and
``resume=True`` skips what is already indexed.

The model reads ``title + " " + text`` by default (``encode`` in the spec);
each passage of a long document carries the document's title. An existing
index is written only if its ``_meta`` matches the model, views and pruning in
use (:func:`milco_os.index.compatibility.check_index`, unless ``force``). While
loading, the index takes the spec's ``refresh_interval``; however the run ends
(finished, refused, interrupted, a bad file), the interval it had before is
restored and written documents are made visible.

With a model, pass ``SparseEncoder.from_pretrained(spec.model)`` as the
encoder; records that carry pre-encoded vectors need none:

>>> import tempfile
>>> from milco_os.text.corpus import to_document, FieldMap
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
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm.auto import tqdm

from milco_os.core.errors import EngineError, InputError, MilcoOSError, TransientEngineError
from milco_os.core.retry import RetryPolicy
from milco_os.engines.base import MAX_ID_BYTES, BulkDocument, Engine, id_problem
from milco_os.engines.bulk import BulkSender, Uploader
from milco_os.index.compatibility import check_index
from milco_os.index.spec import IngestSpec
from milco_os.pipeline.documents import build_source
from milco_os.text.corpus import Document, Record, RecordError, read_files, read_hub, shard
from milco_os.text.passages import PassageSplitter
from milco_os.vectors.sparse import VIEWS, SparseVector, SparseView

log = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 20


class IngestError(MilcoOSError, RuntimeError):
    """Ingestion stopped (the cluster stayed unreachable, an input file is corrupt, a
    signal); ``report`` says how far it got."""

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report


# The index _meta key holding the refresh interval an index had before ingestion set its
# bulk one: a run that starts while another is loading finds the bulk interval set, and
# must restore the owner's, not take the bulk one (or the default) for it.
RESTING_REFRESH_META = "resting_refresh_interval"


def passage_id_problem(doc_id: str, longest: str) -> str:
    """Why a document id is too long once its passage suffix (``#N``) is added."""
    own = len(doc_id.encode("utf-8"))
    suffix = len(longest.encode("utf-8")) - own
    return (f"id is {own} bytes long; with its passage suffix ('#N', {suffix} bytes) it must fit "
            f"the engines' {MAX_ID_BYTES}, so ids may have at most {MAX_ID_BYTES - suffix} bytes")


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

    def count_indexed(self, n: int) -> None:
        """Documents the engine took (the uploader thread counts them)."""
        with self._lock:
            self.indexed += n

    def count_retries(self, n: int) -> None:
        """Requests or documents sent again (the uploader thread counts them)."""
        with self._lock:
            self.retries += n

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
    raise InputError(f"ingest spec for {spec.index!r} names no source: give files or hub "
                     "(or --input FILE)")


class Ingestor:
    """Build (or extend) one index from a stream of records."""

    def __init__(
        self,
        engine: Engine,
        spec: IngestSpec,
        encoder: Any | None = None,
        *,
        resume: bool = False,
        shard_of: tuple[int, int] = (0, 1),
        progress: bool = True,
        error_log: str | Path | None = None,
        max_attempts: int = 8,
        max_wait: float = 30.0,
        force: bool = False,
    ) -> None:
        self.engine, self.spec, self.encoder = engine, spec, encoder
        self.resume, self.shard_of, self.progress = resume, shard_of, progress
        self.error_log = Path(error_log) if error_log else None
        self.policy = RetryPolicy(attempts=max_attempts, max_wait=max_wait)
        self.retrying = self.policy.retrying()
        self.force = force
        tokenizer = getattr(encoder, "tokenizer", None)
        if spec.passages.window and tokenizer is None:
            raise InputError("passage splitting needs the model's tokenizer (give a model)")
        self.splitter = PassageSplitter(tokenizer, spec.passages.window, spec.passages.stride) \
            if spec.passages.window else None

    # ------------------------------------------------------------------ driver

    def run(self, records: Iterable[Record]) -> IngestReport:
        """Ingest ``records``; :class:`IngestError` (with the report) if the run stops early."""
        report = IngestReport(self.spec.index)
        start = time.monotonic()
        try:
            resting = self.retrying(self._ensure_index, report)
        except TransientEngineError as exc:
            raise IngestError(f"cannot reach the cluster ({self.policy.attempts} attempts): "
                              f"{exc}", report) from exc
        unreachable = False
        try:
            self._load(records, report)
        except IngestError as exc:
            unreachable = isinstance(exc.__cause__, TransientEngineError)
            raise
        finally:
            report.seconds = time.monotonic() - start
            self._finish(resting, report, patient=not unreachable)
        return report

    def _load(self, records: Iterable[Record], report: IngestReport) -> None:
        sink = self.error_log.open("a", encoding="utf-8") if self.error_log else None
        uploader = Uploader(self._flush_to(report, sink), self.spec.batch.bulk_docs,
                            self.spec.batch.bulk_bytes)
        bar = tqdm(desc=f"ingest {self.spec.index}", unit="doc", disable=not self.progress,
                   dynamic_ncols=True)
        stopped: IngestError | None = None
        try:
            for batch in self._batches(shard(records, *self.shard_of), report, sink):
                if uploader.error is not None:  # stop reading: nothing more can be sent
                    raise IngestError(f"bulk upload failed: {uploader.error}", report) \
                        from uploader.error
                uploader.put(self._encode(batch, report, sink))
                self._show(bar, report)
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM turned into one by the CLI
            stopped = IngestError(f"ingest of {self.spec.index!r} interrupted "
                                  f"({exc or 'SIGINT'}); re-run with --resume", report)
        except IngestError:
            raise
        except MilcoOSError as exc:  # e.g. a corrupt input file: it names itself
            stopped = IngestError(f"ingest of {self.spec.index!r} stopped: {exc}", report)
        finally:
            uploader.close()
            self._show(bar, report)
            bar.close()
            if sink is not None:
                sink.close()
        if stopped is not None:
            raise stopped
        if uploader.error is not None:
            raise IngestError(f"ingest of {self.spec.index!r} stopped: {uploader.error}. "
                              "Fix the cause and re-run with --resume.", report) \
                from uploader.error

    def _flush_to(self, report: IngestReport, sink: TextIO | None
                  ) -> Callable[[list[BulkDocument]], None]:
        """What the uploader does with each request: send it, count what was indexed,
        record every refusal with its reason."""
        sender = BulkSender(self.engine, self.spec.index, self.policy, report.count_retries)

        def flush(chunk: list[BulkDocument]) -> None:
            failures = sender.send(chunk)
            report.count_indexed(len(chunk) - len(failures))
            for failure in failures:
                report.record_error(f"engine refused {failure.id!r} ({failure.status}): "
                                    f"{failure.reason}", sink)

        return flush

    @staticmethod
    def _show(bar: tqdm, report: IngestReport) -> None:
        """The bar counts records read, as the report does."""
        bar.update(report.read - bar.n)
        bar.set_postfix(indexed=report.indexed, skipped=report.skipped, failed=report.failed,
                        refresh=False)

    def _finish(self, resting: str | None, report: IngestReport, patient: bool) -> None:
        """Restore the refresh interval and make the written documents visible (one try
        only, not ``patient``, when the cluster just stayed unreachable through the retries)."""
        def call(method: Any, *args: Any) -> Any:
            return self.retrying(method, *args) if patient else method(*args)

        try:
            call(self.engine.set_refresh_interval, self.spec.index, resting)
            call(self.engine.refresh, self.spec.index)
            info = call(self.engine.index_info, self.spec.index)
        except EngineError as exc:  # the run's own error, if any, says more
            log.warning("could not restore the refresh interval of %r: %s", self.spec.index, exc)
            return
        report.index_bytes = info.get("store_bytes")

    def _ensure_index(self, report: IngestReport) -> str | None:
        """Create the index if needed, check that it fits, and set the bulk refresh interval;
        returns the interval to restore at the end."""
        index, spec = self.spec.index, self.spec
        if self.engine.health() == "red":  # writes would hang, then fail shard by shard
            raise IngestError("cluster health is red: some primary shards are unassigned; "
                              "fix the cluster (GET _cluster/allocation/explain) and re-run",
                              report)
        # exist_ok: concurrent --shard workers all try; the loser checks the winner's _meta.
        self.engine.create_index(index, meta=spec.describe(), shards=spec.engine.shards,
                                 replicas=spec.engine.replicas, exist_ok=True)
        info = self.engine.index_info(index)
        for warning in check_index(index, info["meta"], force=self.force, model=spec.model,
                                   views=spec.views, pruning=spec.pruning):
            log.warning("%s (forced)", warning)
        resting = info["settings"].get("refresh_interval")
        bulk = spec.engine.refresh_interval
        if bulk is None:
            return resting
        if resting != bulk:  # the owner's setting: recorded for runs that overlap this one
            self.engine.update_meta(index, {RESTING_REFRESH_META: resting})
        else:  # set by a run still going, or interrupted: restore what it recorded
            resting = info["meta"].get(RESTING_REFRESH_META)
        self.engine.set_refresh_interval(index, bulk)
        return resting

    # ------------------------------------------------------------------ stages

    def _batches(self, records: Iterable[Record], report: IngestReport, sink: TextIO | None
                 ) -> Iterator[list[_Passage]]:
        pending: list[_Passage] = []  # the group being filled
        try:
            for group in self._groups(records, report, sink, pending):
                yield from self._unseen(group, report)
        except (KeyboardInterrupt, MilcoOSError):
            # the stream stopped (a signal, a corrupt file): still index what was read
            if pending:
                yield from self._unseen(list(pending), report)
            raise

    def _groups(self, records: Iterable[Record], report: IngestReport, sink: TextIO | None,
                batch: list[_Passage]) -> Iterator[list[_Passage]]:
        """Passages in groups of ``batch.encode``, filled in ``batch`` (emptied after each)."""
        in_batch: dict[str, int] = {}  # id -> position, to catch ids repeated in one batch
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
            ids = [engine_id(record.id, number) for number in range(len(texts))]
            if id_problem(ids[-1]):  # the engine would refuse the whole request
                report.invalid += 1
                report.record_error(str(RecordError(record.position, record.id[:64] + "...",
                                                    "id", passage_id_problem(record.id, ids[-1]))),
                                    sink)
                continue
            batch.extend(_Passage(i, record, n, text)
                         for n, (i, text) in enumerate(zip(ids, texts, strict=True)))
            report.passages += len(texts)
            if len(batch) >= self.spec.batch.encode:
                yield list(batch)
                batch.clear()
                in_batch = {}
        if batch:
            yield list(batch)
            batch.clear()

    def _unseen(self, batch: list[_Passage], report: IngestReport) -> Iterator[list[_Passage]]:
        if self.resume:
            existing = self.engine.existing_ids(self.spec.index, [p.id for p in batch])
            report.skipped += len(existing)
            batch = [p for p in batch if p.id not in existing]
        if batch:
            yield batch

    def _encode(self, batch: list[_Passage], report: IngestReport, sink: TextIO | None
                ) -> list[BulkDocument]:
        """The engine documents of a batch of passages, each serialised once."""
        vectors = self._vectors(batch, report, sink)
        documents = []
        for passage, vector in zip(batch, vectors, strict=True):
            if vector is None:
                continue
            vector = self.spec.pruning.apply(vector)  # the rule the index _meta records
            vector = SparseVector(*(vector.view(v) if v in self.spec.views else SparseView.empty()
                                    for v in VIEWS))
            doc = passage.doc
            try:
                source = build_source(doc.id, passage.number, vector, title=doc.title,
                                      text=passage.text or None, lang=doc.lang)
            except ValueError as exc:
                report.record_error(f"document {doc.id!r} passage {passage.number}: {exc}", sink)
                continue
            try:
                document = BulkDocument.of(self.spec.index, passage.id, source)
            except ValueError as exc:  # NaN/inf reached the source: not JSON
                report.record_error(f"document {doc.id!r} passage {passage.number}: {exc}", sink)
                continue
            for view in VIEWS:
                report.terms[view].append(len(source[view]))
            documents.append(document)
        return documents

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
            texts = [self.spec.encode.text(batch[i].doc.title, batch[i].text) for i in todo]
            for i, vector in zip(todo, self._encode_texts(texts), strict=True):
                vectors[i] = vector
        report.encoded += sum(v is not None for v in vectors)
        return vectors

    def _encode_texts(self, texts: Sequence[str]) -> list[SparseVector]:
        return self.encoder.encode(list(texts), kind="document", max_length=self.spec.max_length,
                                   batch_size=self.spec.batch.encode)
