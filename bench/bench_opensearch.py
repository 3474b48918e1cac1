"""OpenSearch with a trained MILCO's vectors: two-phase, end to end, ingest, index size.

Corpus: ``--docs`` synthetic passages of ``milco_corpus.py`` (vectors drawn from the
model's own term statistics; each passage's ``text`` is a real sentence, for BM25),
ingested with the ``Ingestor`` (pre-encoded) and force-merged to one segment.
Queries: real sentences the corpus does not hold, encoded by the model as queries.
All in one run, on the same index:

- **two-phase** vs the full query: ``--mode two-phase`` (high-weight terms first,
  the rest added by rescoring the best ``k x expansion_rate``) over a sweep of
  ``prune_ratio`` x ``expansion_rate``; recall@10 is the overlap with the full
  query's top 10. The fastest setting with recall@10 >= 0.99 is reported, timed with
  the hits' sources (as ``search`` returns them) and as ids only (the query alone).
- **scoring** of the full query: Lucene skipping what cannot reach the top 10, against
  scoring every matching document, and as milco-os sends it (ids only).
- **query pruning** vs the full query: the full query of each vector pruned to its
  heaviest terms per view (``--query-prune``), latency and recall@10 against the
  unpruned query's top 10.
- **end to end**: per query text, encoding (milco-os's thread policy) plus the
  search, timed together, full and two-phase; baseline: BM25 (``match`` on ``text``)
  on the same index, also timed from the text.
- **ingest with encoding** on CPU: ``Ingestor`` with the model on real sentences;
  baseline: the same documents ingested pre-encoded (so the ratio is what encoding costs).
- **index bytes per passage** at document pruning levels, on the model's real
  vectors of real sentences, against the same texts without vectors (BM25 only).

    MILCO_OS_URL=http://127.0.0.1:9200 python bench/bench_opensearch.py \\
        --model milco-small --docs 100000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import cluster_url, force_merge, latency_stats, measure, save_result
from milco_corpus import Vectors, encode_real, synthetic_cached

from milco_os.models.registry import resolve_model

K = 10
TWO_PHASE = [(ratio, rate) for ratio in (0.4, 0.3, 0.2, 0.1) for rate in (5.0, 10.0, 20.0)]
DOC_PRUNES = ("none", "mass:0.5", "topk:64", "topk:32")
QUERY_PRUNES = ("topk:32", "topk:16")
TARGET_RECALL = 0.99


def ingest(engine, index: str, corpus: Vectors, rows: range, prune: str = "none",
           encoder=None) -> float:
    """Docs/s of an Ingestor run over ``rows`` (pre-encoded unless ``encoder``)."""
    from milco_os.index.spec import IngestSpec
    from milco_os.pipeline.ingest import Ingestor
    from milco_os.text.corpus import Document

    engine.delete_index(index)
    vectors = corpus.iter_dicts(rows) if encoder is None else (None for _ in rows)
    records = (Document(f"d{row}", corpus.texts[row], vectors=v)
               for row, v in zip(rows, vectors, strict=True))
    spec = IngestSpec(index=index, model="bench" if encoder is None else "model", prune=prune)
    tick = time.perf_counter()
    report = Ingestor(engine, spec, encoder, progress=False).run(records)
    seconds = time.perf_counter() - tick
    assert report.indexed == len(rows), report.summary()
    force_merge(engine, index)
    return len(rows) / seconds


def recall(found, truth) -> float:
    return float(np.mean([len(set(f) & set(t)) / max(1, len(t))
                          for f, t in zip(found, truth, strict=True)]))


def two_phase_figures(engine, index: str, queries: list) -> dict:
    """The full query and each two-phase setting, timed twice: as ``search`` sends them
    (hits carry their sources, vectors excluded) and with ``_source: false`` (ids only).
    Fetching ten sources costs the same in both modes, but on this machine it swings from
    2 to 20 ms with the page cache; the ids-only figures time the query alone."""
    from milco_os.engines.query import SparseQuery

    def timed(sparse: list) -> tuple[list, dict, dict]:
        hits, ms = measure([lambda q=q: engine.search(index, q, K) for q in sparse])
        bodies = [{**engine.search_body(q, K), "_source": False} for q in sparse]
        _, ids_ms = measure([lambda b=b: engine.raw_search(index, b) for b in bodies])
        return [[h.id for h in hs] for hs in hits], latency_stats(ms), latency_stats(ids_ms)

    truth, full, full_ids = timed([SparseQuery(v) for v in queries])
    out = {"full": full, "full_ids_only": full_ids, "sweep": {}}
    for ratio, rate in TWO_PHASE:
        found, stats, ids_stats = timed([
            SparseQuery(v, mode="two-phase", prune_ratio=ratio, expansion_rate=rate)
            for v in queries])
        out["sweep"][f"prune_ratio={ratio} expansion_rate={rate}"] = {
            **stats, "ids_only": ids_stats, "recall_at_10": recall(found, truth),
            "prune_ratio": ratio, "expansion_rate": rate}
    for series, full_stats, p50 in (("", full, lambda v: v["p50_ms"]),
                                    ("_ids_only", full_ids, lambda v: v["ids_only"]["p50_ms"])):
        reaching = [(p50(v), name) for name, v in out["sweep"].items()
                    if v["recall_at_10"] >= TARGET_RECALL]
        best = min(reaching)[1] if reaching else max(
            out["sweep"], key=lambda n: out["sweep"][n]["recall_at_10"])
        out[f"best{series}"] = best
        out[f"target_reached{series}"] = bool(reaching)
        out[f"speedup_p50{series}"] = full_stats["p50_ms"] / p50(out["sweep"][best])
    out["query_pruning"] = query_pruning_figures(engine, index, queries, truth)
    return out


def query_pruning_figures(engine, index: str, queries: list, truth: list) -> dict:
    """The full query of each vector pruned at :data:`QUERY_PRUNES`: latency, terms sent
    and recall@10 against the unpruned query's top 10 (``truth``)."""
    from milco_os.engines.query import SparseQuery
    from milco_os.vectors.pruning import Pruning

    out = {}
    for level in QUERY_PRUNES:
        pruned = [Pruning.parse(level).apply(v) for v in queries]
        sparse = [SparseQuery(v) for v in pruned]
        found, ms = measure([lambda q=q: engine.search(index, q, K) for q in sparse])
        out[level] = {**latency_stats(ms),
                      "recall_at_10": recall([[h.id for h in hs] for hs in found], truth),
                      "terms_per_query": float(np.mean([len(v.pivot) + len(v.echo)
                                                        for v in pruned]))}
    return out


def scoring_figures(engine, index: str, queries: list) -> dict:
    """The full query (ids only) with Lucene skipping what cannot reach the top 10
    (``track_total_hits: false``), scoring every match (``true``), and as
    :func:`build_search_body` sends it (true above ``COMPLETE_SCORING_ABOVE`` terms)."""
    from milco_os.engines.query import SparseQuery

    sent = [{**engine.search_body(SparseQuery(v), K), "_source": False} for v in queries]
    out = {}
    for name, track in (("skipping", False), ("every match", True), ("as sent", None)):
        bodies = [b if track is None else {**b, "track_total_hits": track} for b in sent]
        out[name] = latency_stats(measure([lambda b=b: engine.raw_search(index, b)
                                           for b in bodies])[1])
    out["queries_scoring_every_match"] = sum(b["track_total_hits"] for b in sent)
    return out


def end_to_end(engine, index: str, encoder, texts: list[str], best: dict) -> dict:
    from milco_os.engines.query import SparseQuery

    def milco(mode: str, **options):
        def call(text: str):
            [vector] = encoder.encode([text])
            return engine.search(index, SparseQuery(vector, mode=mode, **options), K)
        return call

    def bm25(text: str):
        return engine.raw_search(index, {"size": K, "track_total_hits": False,
                                         "_source": False, "query": {"match": {"text": text}}})

    variants = {"full": milco("default"),
                "two-phase": milco("two-phase", prune_ratio=best["prune_ratio"],
                                   expansion_rate=best["expansion_rate"]),
                "bm25": bm25}
    encode_only = [lambda t=t: encoder.encode([t]) for t in texts]
    out = {"encode": latency_stats(measure(encode_only)[1])}
    for name, call in variants.items():
        out[name] = latency_stats(measure([lambda t=t, c=call: c(t) for t in texts])[1])
    return out


def size_figures(engine, real: Vectors, n: int) -> dict:
    """Bytes per passage at each document pruning level, and for the texts alone."""
    from milco_os.pipeline.documents import build_source
    from milco_os.vectors.sparse import SparseVector, SparseView

    rows = range(min(n, len(real)))
    out = {}
    for prune in DOC_PRUNES:
        index = f"bench-os-size-{prune.replace(':', '').replace('.', '')}"
        ingest(engine, index, real, rows, prune)
        out[prune] = engine.index_info(index)["store_bytes"] / len(rows)
        engine.delete_index(index)
    engine.delete_index("bench-os-size-text")
    engine.create_index("bench-os-size-text", meta={"model": "none", "views": ["pivot"],
                                                    "pruning": "none"}, refresh_interval="-1")
    docs = [(f"d{i}#0", build_source(f"d{i}", 0, SparseVector(SparseView.empty()),
                                     text=real.texts[i])) for i in rows]
    for start in range(0, len(docs), 500):
        assert not engine.bulk_index("bench-os-size-text", docs[start:start + 500])
    force_merge(engine, "bench-os-size-text")
    out["text only"] = engine.index_info("bench-os-size-text")["store_bytes"] / len(rows)
    engine.delete_index("bench-os-size-text")
    return out


def run(model: Path, n_docs: int, n_real: int, n_queries: int, n_encode_ingest: int) -> dict:
    from milco_os.encoders import SparseEncoder
    from milco_os.engines import open_engine
    from milco_os.engines.connection import ConnectionSettings
    from milco_os.vectors.sparse import SparseVector

    real = encode_real(model, n_real)
    corpus = synthetic_cached(model, real, n_docs)
    query_vectors = encode_real(model, n_queries, kind="query", from_end=True)
    queries = [SparseVector.from_dict(q) for q in query_vectors.dicts()]
    encoder = SparseEncoder.from_pretrained(model, device="cpu")
    index = f"bench-os-{n_docs}"
    with cluster_url() as url:
        engine = open_engine(ConnectionSettings(url=url))
        pre_encoded_rate = ingest(engine, index, corpus, range(n_docs))
        two_phase = two_phase_figures(engine, index, queries)
        scoring = scoring_figures(engine, index, queries)
        e2e = end_to_end(engine, index, encoder, query_vectors.texts,
                         two_phase["sweep"][two_phase["best"]])
        store = engine.index_info(index)["store_bytes"]
        engine.delete_index(index)
        rows = range(n_encode_ingest)
        rates = {"pre-encoded": ingest(engine, "bench-os-ingest", real, rows),
                 "encoding": ingest(engine, "bench-os-ingest", real, rows, encoder=encoder)}
        engine.delete_index("bench-os-ingest")
        sizes = size_figures(engine, real, n_real)
    return {
        "baseline": "the full query (two-phase); BM25 match on the same index (end to end); "
                    "pre-encoded ingest of the same documents (ingest); the texts alone (size)",
        "settings": {"documents": n_docs, "real_documents": n_real, "queries": len(queries),
                     "k": K, "model": str(model),
                     "terms_per_document": corpus.terms_per_row(),
                     "terms_per_query": query_vectors.terms_per_row(),
                     "ingest_with_encoding_documents": n_encode_ingest},
        "two_phase": two_phase,
        "scoring": scoring,
        "end_to_end": e2e,
        "ingest_docs_per_s": {**rates, "corpus_pre_encoded": pre_encoded_rate},
        "bytes_per_passage": sizes,
        "index_bytes_per_passage": store / n_docs,
        "figures": {
            "two_phase_speedup_p50": two_phase["speedup_p50"],
            "two_phase_recall_at_10": two_phase["sweep"][two_phase["best"]]["recall_at_10"],
            "two_phase_speedup_p50_ids_only": two_phase["speedup_p50_ids_only"],
            "end_to_end_full_vs_bm25_p50": e2e["full"]["p50_ms"] / e2e["bm25"]["p50_ms"],
            "ingest_encoding_vs_pre_encoded": rates["encoding"] / rates["pre-encoded"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=resolve_model, required=True,
                        help="model folder or name (milco-small)")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--real", type=int, default=6000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--encode-ingest", type=int, default=300,
                        help="documents ingested with encoding on CPU")
    args = parser.parse_args()
    print(save_result(f"opensearch_{args.docs}", run(args.model, args.docs, args.real,
                                                     args.queries, args.encode_ingest)))


if __name__ == "__main__":
    main()
