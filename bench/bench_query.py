"""Query latency and index size: MILCO queries on OpenSearch at several pruning levels.

All from one run, on the same documents and queries: with ``--model``, the trained
MILCO's pivot view (synthetic passages drawn from its term statistics, with real
sentences as text, and real queries; ``milco_corpus.py``), else splade-tiny vectors
of English sentences (queries: other sentences, encoded as queries):

- milco-os ``rank_feature`` queries through ``engine.search`` at query pruning
  levels none / top-k / mass, on indexes at document pruning levels none / mass /
  top-k (index size per document after a force-merge to one segment, against an
  index of the same texts without vectors: what BM25 alone needs);
- baseline 1: BM25, a ``match`` query on the same index's ``text``;
- baseline 2: exact brute force, scipy sparse dot products of each query with all
  documents (in process; it also defines the true top 10);
- baseline 3: Seismic (``pyseismic-lsr``, in process) on the same vectors, at the
  fastest setting whose recall@10 matches the OpenSearch exact query's (or, when
  none of the settings tried reaches it, the one with the highest recall).

Latency is per query, one sequential client, after a warm-up pass; recall@10 is
the overlap with the exact top 10 of the unpruned query on unpruned documents.

    MILCO_OS_URL=http://127.0.0.1:9200 python bench/bench_query.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from common import cluster_url, encoded, force_merge, latency_stats, measure, save_result

QUERY_PRUNES = ("none", "topk:32", "topk:16", "topk:8", "mass:0.5")
DOC_PRUNES = ("none", "mass:0.5", "topk:32")
SEISMIC_SETTINGS = [(cut, heap) for cut in (5, 10, 20, 40) for heap in (0.7, 0.9, 1.0)]
K = 10
BULK = 500


def run(quick: bool, model: Path | None = None) -> dict:
    n_docs, n_queries = (5000, 100) if quick else (20000, 300)
    if model is None:
        texts, docs = encoded("document", n_docs)
        query_texts, queries = encoded("query", n_queries, skip=n_docs)
    else:
        from milco_corpus import pivot_corpus

        texts, docs, query_texts, queries = pivot_corpus(model, n_docs, n_queries)
    exact = ExactScorer(docs)
    truth = [exact.top(q, K) for q in queries]
    report: dict = {"settings": {"documents": n_docs, "queries": n_queries, "k": K,
                                 "vectors": str(model) if model else "splade-tiny",
                                 "doc_terms_mean": float(np.mean([len(d) for d in docs])),
                                 "query_terms_mean": float(np.mean([len(q) for q in queries]))}}
    with cluster_url() as url:
        report["opensearch"] = opensearch_figures(url, texts, docs, query_texts, queries, truth)
    report["brute_force"] = brute_force_figures(exact, queries)
    report["seismic"] = seismic_figures(docs, queries, truth, report["opensearch"])
    report["baseline"] = ("BM25 match on the same index; exact scipy brute force; Seismic "
                          "(pyseismic-lsr) at matched recall@10")
    report["figures"] = summary(report)
    return report


class ExactScorer:
    """Documents as one CSR matrix; exact dot products with a query."""

    def __init__(self, docs: list[dict[str, float]]) -> None:
        self.columns: dict[str, int] = {}
        data, indices, indptr = [], [], [0]
        for doc in docs:
            for term, weight in doc.items():
                indices.append(self.columns.setdefault(term, len(self.columns)))
                data.append(weight)
            indptr.append(len(indices))
        self.matrix = sp.csr_matrix((np.array(data, np.float32), indices, indptr),
                                    shape=(len(docs), len(self.columns)))
        self.by_term = self.matrix.T.tocsr()  # term -> postings, for sparse query products

    def scores(self, query: dict[str, float]) -> np.ndarray:
        cols = [self.columns[t] for t in query if t in self.columns]
        weights = np.array([w for t, w in query.items() if t in self.columns], np.float32)
        return np.asarray(self.by_term[cols].T @ weights).ravel()

    def top(self, query: dict[str, float], k: int) -> list[int]:
        scores = self.scores(query)
        order = np.argsort(-scores, kind="stable")[:k]
        return [int(i) for i in order if scores[i] > 0]


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / max(len(t), 1)
                          for f, t in zip(found, truth, strict=True)]))


def opensearch_figures(url, texts, docs, query_texts, queries, truth) -> dict:
    from milco_os.engines import open_engine
    from milco_os.engines.connection import ConnectionSettings
    from milco_os.engines.query import SparseQuery
    from milco_os.pipeline.documents import build_source
    from milco_os.vectors.pruning import Pruning
    from milco_os.vectors.sparse import SparseVector, SparseView

    engine = open_engine(ConnectionSettings(url=url))
    vectors = [SparseVector.from_dict({"pivot": d}) for d in docs]
    query_vectors = [SparseVector.from_dict({"pivot": q}) for q in queries]
    text_only = [build_source(f"d{i}", 0, SparseVector(SparseView.empty()), text=t)
                 for i, t in enumerate(texts)]
    out: dict = {"indexes": {}, "queries": {},
                 "text_only_bytes_per_doc": index_sources(engine, "bench-query-text", "none",
                                                          text_only) / len(docs)}
    engine.delete_index("bench-query-text")
    for doc_prune in DOC_PRUNES:
        index = f"bench-query-{re.sub(r'[^a-z0-9]+', '', doc_prune)}"
        rule = Pruning.parse(doc_prune)
        sources = [build_source(f"d{i}", 0, rule.apply(v), text=t)
                   for i, (v, t) in enumerate(zip(vectors, texts, strict=True))]
        out["indexes"][doc_prune] = {
            "index": index,
            "bytes_per_doc": index_sources(engine, index, doc_prune, sources) / len(docs),
            "terms_per_doc": float(np.mean([len(s["pivot"]) for s in sources]))}
        prunes = QUERY_PRUNES if doc_prune == "none" else ("none",)
        for query_prune in prunes:
            qrule = Pruning.parse(query_prune)
            sparse = [SparseQuery(qrule.apply(v)) for v in query_vectors]
            calls = [lambda q=q, i=index: engine.search(i, q, K) for q in sparse]
            hits, ms = measure(calls)
            found = [[int(h.doc_id[1:]) for h in hs] for hs in hits]
            out["queries"][f"doc={doc_prune} q={query_prune}"] = {
                **latency_stats(ms), "recall_at_10": recall(found, truth),
                "query_terms_mean": float(np.mean([len(q.vector.pivot) for q in sparse]))}
        if doc_prune == "none":
            out["bm25"] = bm25_figures(engine, index, query_texts)
    for info in out["indexes"].values():
        engine.delete_index(info["index"])
    return out


def index_sources(engine, index: str, pruning: str, sources: list[dict]) -> int:
    """A fresh index holding ``sources``, force-merged; its size in bytes."""
    engine.delete_index(index)
    engine.create_index(index, meta={"model": "splade-tiny", "views": ["pivot"],
                                     "pruning": pruning}, refresh_interval="-1")
    docs = [(f"{s['doc_id']}#0", s) for s in sources]
    for start in range(0, len(docs), BULK):
        assert not engine.bulk_index(index, docs[start:start + BULK])
    force_merge(engine, index)
    return engine.index_info(index)["store_bytes"]


def bm25_figures(engine, index: str, query_texts: list[str]) -> dict:
    bodies = [{"size": K, "track_total_hits": False, "_source": False,
               "query": {"match": {"text": t}}} for t in query_texts]
    calls = [lambda b=b: engine.raw_search(index, b) for b in bodies]
    _, ms = measure(calls)
    return latency_stats(ms)


def brute_force_figures(exact: ExactScorer, queries: list[dict[str, float]]) -> dict:
    calls = [lambda q=q: exact.top(q, K) for q in queries]
    _, ms = measure(calls)
    return {**latency_stats(ms), "recall_at_10": 1.0}


def seismic_figures(docs, queries, truth, opensearch: dict) -> dict:
    try:
        import seismic
        from seismic import SeismicDataset, SeismicIndex
    except ImportError:
        return {"skipped": "pyseismic-lsr is not installed"}
    string = seismic.get_seismic_string()
    dataset = SeismicDataset()
    for i, doc in enumerate(docs):
        dataset.add_document(f"d{i}", np.array(list(doc), dtype=string),
                             np.array(list(doc.values()), dtype=np.float32))
    tick = time.perf_counter()
    index = SeismicIndex.build_from_dataset(dataset)
    build_seconds = time.perf_counter() - tick
    arrays = [(np.array(list(q), dtype=string), np.array(list(q.values()), dtype=np.float32))
              for q in queries]
    sweep = {}
    for cut, heap in SEISMIC_SETTINGS:
        calls = [lambda t=t, w=w, c=cut, h=heap: index.search("q", t, w, K, c, h)
                 for t, w in arrays]
        hits, ms = measure(calls)
        found = [[int(doc_id[1:]) for _, _, doc_id in hs] for hs in hits]
        sweep[f"query_cut={cut} heap_factor={heap}"] = {**latency_stats(ms),
                                                        "recall_at_10": recall(found, truth)}
    target = opensearch["queries"]["doc=none q=none"]["recall_at_10"]
    matched = [(v["p50_ms"], name) for name, v in sweep.items() if v["recall_at_10"] >= target]
    best = min(matched)[1] if matched else max(sweep, key=lambda n: sweep[n]["recall_at_10"])
    return {"build_seconds": build_seconds, "index_bytes": space_usage(index),
            "sweep": sweep, "matched_setting": best, "matched": sweep[best],
            "target_recall_at_10": target, "target_reached": bool(matched)}


def space_usage(index) -> int | None:
    """Seismic's own size estimate, which it only prints (to the process's stdout)."""
    with tempfile.TemporaryFile(mode="w+") as capture:
        saved = os.dup(1)
        try:
            os.dup2(capture.fileno(), 1)
            index.print_space_usage_byte()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        capture.seek(0)
        found = re.findall(r"Total:\s*(\d+)\s*Bytes", capture.read())
    with contextlib.suppress(IndexError):
        return int(found[-1])
    return None


def summary(report: dict) -> dict:
    """The headline ratios, each against a named baseline from this run."""
    os_q = report["opensearch"]["queries"]
    exact_q = os_q["doc=none q=none"]
    figures = {"milco_p50_ms": exact_q["p50_ms"], "milco_recall_at_10": exact_q["recall_at_10"],
               "bm25_p50_ms": report["opensearch"]["bm25"]["p50_ms"],
               "brute_force_p50_ms": report["brute_force"]["p50_ms"]}
    figures["milco_vs_bm25_latency_ratio"] = figures["milco_p50_ms"] / figures["bm25_p50_ms"]
    figures["milco_vs_brute_force_latency_ratio"] = (figures["milco_p50_ms"]
                                                     / figures["brute_force_p50_ms"])
    if "matched" in report["seismic"]:
        figures["seismic_p50_ms"] = report["seismic"]["matched"]["p50_ms"]
        figures["milco_vs_seismic_latency_ratio"] = (figures["milco_p50_ms"]
                                                     / figures["seismic_p50_ms"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    print(save_result("query", run(parser.parse_args().quick)))


if __name__ == "__main__":
    main()
