"""Bulk requests: each document serialised once, packed into requests, sent with retries.

- :class:`~milco_os.engines.base.BulkDocument`: a document's ``_id``, source and its
  exact ``_bulk`` lines, serialised once (a NaN or infinite weight is refused there,
  document by document);
- :func:`chunks`: documents packed into requests of at most ``max_docs`` documents and
  ``max_bytes`` bytes, apart from sending (as opensearch-py's action chunker);
- :class:`BulkSender`: one request through :meth:`Engine.bulk_send`, retried whole on
  transient errors, then item by item for documents refused with 429 or 5xx; a request
  refused whole because of one document is split until that document alone fails;
- :class:`Uploader`: a background thread that packs and sends what it is given, so
  encoding and bulk requests overlap.

>>> docs = [BulkDocument.of("demo", f"d{i}#0", {"doc_id": f"d{i}"}) for i in range(5)]
>>> [len(c) for c in chunks(docs, max_docs=2, max_bytes=10_000)]
[2, 2, 1]
>>> len(docs[0].lines) == len(b'{"index": {"_index": "demo", "_id": "d0#0"}}\\n{"doc_id": "d0"}\\n')
True
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from milco_os.core.errors import EngineError
from milco_os.core.retry import RetryPolicy, is_transient
from milco_os.engines.base import BulkDocument, BulkFailure, Engine

# Statuses of a bulk request refused whole because of what it holds (a malformed action,
# an id too long, a body too large): split it, so only the offending documents fail.
WHOLE_REQUEST_REFUSALS = (400, 413)


def chunks(documents: Iterable[BulkDocument], max_docs: int, max_bytes: int
           ) -> Iterator[list[BulkDocument]]:
    """``documents`` packed into requests of at most ``max_docs`` documents and
    ``max_bytes`` bytes (a document larger than ``max_bytes`` goes alone)."""
    chunk: list[BulkDocument] = []
    size = 0
    for document in documents:
        if chunk and (len(chunk) >= max_docs or size + len(document.lines) > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(document)
        size += len(document.lines)
    if chunk:
        yield chunk


class BulkSender:
    """Sends requests to one index under a :class:`RetryPolicy` (see the module doc);
    ``on_retry(n)`` hears of every request or document sent again."""

    def __init__(self, engine: Engine, index: str, policy: RetryPolicy,
                 on_retry: Callable[[int], None] = lambda n: None) -> None:
        self.engine, self.index, self.policy, self.on_retry = engine, index, policy, on_retry
        self.retrying = policy.retrying()

    def send(self, documents: Sequence[BulkDocument]) -> list[BulkFailure]:
        """The documents of one request that the engine refused for good."""
        pending = list(documents)
        failures: list[BulkFailure] = []
        retry: dict[str, BulkFailure] = {}
        for attempt in range(self.policy.attempts):
            failed = self._whole(pending)
            retry = {f.id: f for f in failed if is_transient(f.status)}
            failures.extend(f for f in failed if not is_transient(f.status))
            pending = [d for d in pending if d.id in retry]
            if not pending or attempt + 1 == self.policy.attempts:
                break
            self.on_retry(1)
            time.sleep(self.policy.delay(attempt))
        return failures + [BulkFailure(d.id, retry[d.id].status, f"still refused after "
                                       f"{self.policy.attempts} attempts: {retry[d.id].reason}")
                           for d in pending]

    def _whole(self, documents: list[BulkDocument]) -> list[BulkFailure]:
        """One request (whole-request retries included); a refused request is bisected."""
        try:
            return self.retrying(self.engine.bulk_send, self.index, documents)
        except EngineError as exc:
            if exc.status not in WHOLE_REQUEST_REFUSALS:
                raise
            if len(documents) == 1:  # refused whole for this document, e.g. an id too long
                return [BulkFailure(documents[0].id, 400, str(exc))]
            half = len(documents) // 2
            return self._whole(documents[:half]) + self._whole(documents[half:])
        finally:
            self.on_retry(self.retrying.statistics.get("attempt_number", 1) - 1)


class Uploader:
    """A background thread that packs the documents it is given into requests
    (:func:`chunks`) and hands each to ``flush``. The first exception ``flush`` raises
    stops the sending (kept in :attr:`error`); what is put afterwards is drained unsent,
    so the producer never waits on a dead consumer."""

    def __init__(self, flush: Callable[[list[BulkDocument]], None], max_docs: int,
                 max_bytes: int) -> None:
        self.flush, self.max_docs, self.max_bytes = flush, max_docs, max_bytes
        self.queue: queue.Queue[list[BulkDocument] | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="milco-os-bulk", daemon=True)
        self.thread.start()

    def put(self, documents: list[BulkDocument]) -> None:
        self.queue.put(documents)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _documents(self) -> Iterator[BulkDocument]:
        while (documents := self.queue.get()) is not None:
            yield from documents

    def _loop(self) -> None:
        for chunk in chunks(self._documents(), self.max_docs, self.max_bytes):
            if self.error is not None:
                continue
            try:
                self.flush(chunk)
            except Exception as exc:  # retries exhausted, or a bug: stop sending, keep counts
                self.error = exc
