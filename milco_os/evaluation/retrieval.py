"""Runs and what they cost: search every query, keep each document's best passage, time it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from milco_os.engines.base import Hit
from milco_os.engines.query import count_terms, sent_terms
from milco_os.evaluation.datasets import Query
from milco_os.pipeline.search import Searcher

Run = dict[str, dict[str, float]]  # query id -> {document id: score}


class Retriever(Protocol):
    """What :func:`retrieve` searches with: a :class:`Searcher` or a BM25 searcher."""

    def search(self, texts: Sequence[str], k: int = 10) -> list[list[Hit]]: ...


@dataclass
class Retrieval:
    """A run with what it cost: per-query engine latency (ms) and query terms sent."""

    run: Run = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    query_terms: list[int] = field(default_factory=list)
    encode_seconds: float = 0.0

    def extend(self, other: Retrieval) -> None:
        self.run.update(other.run)
        self.latencies_ms += other.latencies_ms
        self.query_terms += other.query_terms
        self.encode_seconds += other.encode_seconds

    def cost(self) -> dict[str, float]:
        """Latency p50/p95 (ms), queries per second (one client), mean query terms."""
        if not self.latencies_ms:
            return {}
        lat = np.array(self.latencies_ms)
        stats = {"latency_p50_ms": float(np.percentile(lat, 50)),
                 "latency_p95_ms": float(np.percentile(lat, 95)),
                 "qps": float(1000.0 / lat.mean()) if lat.mean() > 0 else 0.0}
        if self.query_terms:
            stats["query_terms_mean"] = float(np.mean(self.query_terms))
        if self.encode_seconds:
            stats["encode_ms_per_query"] = 1000.0 * self.encode_seconds / len(lat)
        return stats


def best_per_document(hits: Iterable[Hit]) -> dict[str, float]:
    """``{doc_id: best passage score}``."""
    scores: dict[str, float] = {}
    for hit in hits:
        if hit.score > scores.get(hit.doc_id, float("-inf")):
            scores[hit.doc_id] = hit.score
    return scores


def retrieve(retriever: Retriever, queries: Sequence[Query], k: int = 100,
             batch_size: int = 32) -> Retrieval:
    """Search every query as :meth:`Searcher.search` does, timing each search on its own
    (queries are encoded in batches first; the encoding time is reported apart)."""
    result = Retrieval()
    for start in range(0, len(queries), batch_size):
        batch = queries[start:start + batch_size]
        texts = [q.text for q in batch]
        if isinstance(retriever, Searcher):
            tick = time.perf_counter()
            vectors = retriever.encode(texts)
            result.encode_seconds += time.perf_counter() - tick
            limit = retriever.engine.max_clause_count
            terms = [count_terms(sent_terms(retriever.options.query(v, t), limit))
                     for v, t in zip(vectors, texts, strict=True)]
            result.query_terms += terms
            # A query left with no terms (a view the model lacks, pruned away) matches
            # nothing; sent as an empty bool, the engine would return arbitrary documents.
            calls = [(lambda v=v, t=t: retriever.search_vector(v, t, k)) if n else list
                     for v, t, n in zip(vectors, texts, terms, strict=True)]
        else:
            calls = [lambda t=t: retriever.search([t], k)[0] for t in texts]
        for query, call in zip(batch, calls, strict=True):
            tick = time.perf_counter()
            hits = call()
            result.latencies_ms.append(1000.0 * (time.perf_counter() - tick))
            result.run[query.id] = best_per_document(hits)
    return result
