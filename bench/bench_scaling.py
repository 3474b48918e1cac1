"""Scaling: query latency and index size as the corpus grows (10k -> 100k documents).

Documents and queries are synthetic sparse vectors shaped like MILCO's: a pivot
view over 30,522 word pieces and an echo view over 250,002 sentence pieces, terms
drawn from a Zipf law (so common terms have long posting lists, as in real text)
and weights from a gamma distribution. Each size is ingested through the
``Ingestor`` (pre-encoded vectors), force-merged to one segment, then searched
with the same queries (one sequential client, after a warm-up pass). Baseline:
the smallest corpus; the growth of latency and size per 10x documents is reported.
``--quick`` uses 2k and 20k documents (still 10x).

1M documents would need ~5 GB of index and hours of ingestion on a busy 2-core
machine; it runs only when asked: ``--sizes 10000,100000,1000000``.

    MILCO_OS_URL=http://127.0.0.1:9200 python bench/bench_scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator

import numpy as np
from common import cluster_url, force_merge, latency_stats, measure, save_result

VOCAB = {"pivot": 30522, "echo": 250002}
DOC_TERMS = {"pivot": (80, 250), "echo": (15, 60)}
QUERY_TERMS = {"pivot": (20, 60), "echo": (3, 12)}
ZIPF_EXPONENT = 1.1
K = 10


class ZipfVectors:
    """Sparse vectors whose terms follow a Zipf law over each vocabulary."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.cdf = {}
        for view, size in VOCAB.items():
            weights = (np.arange(1, size + 1) + 50.0) ** -ZIPF_EXPONENT
            self.cdf[view] = np.cumsum(weights) / weights.sum()

    def draw(self, lengths: dict[str, tuple[int, int]]) -> dict[str, dict[str, float]]:
        vector = {}
        for view, (low, high) in lengths.items():
            n = int(self.rng.integers(low, high))
            ranks = np.unique(np.searchsorted(self.cdf[view], self.rng.random(n)))
            weights = self.rng.gamma(2.0, 0.5, size=len(ranks)) + 0.01
            prefix = "t" if view == "pivot" else "\u2581p"
            vector[view] = {f"{prefix}{r}": float(w) for r, w in zip(ranks, weights, strict=True)}
        return vector


def documents(n: int, seed: int = 0) -> Iterator:
    from milco_os.text.corpus import Document

    draw = ZipfVectors(seed)
    for i in range(n):
        yield Document(f"d{i}", "", vectors=draw.draw(DOC_TERMS), position=i)


FULL_SIZES, QUICK_SIZES = (10_000, 100_000), (2_000, 20_000)


def milco_documents(model, n: int, n_queries: int) -> tuple[Iterator, list[dict]]:
    """The trained MILCO's synthetic passages (``milco_corpus.py``) and real queries."""
    from milco_corpus import encode_real, synthetic_cached

    from milco_os.text.corpus import Document

    corpus = synthetic_cached(model, encode_real(model, 1000), n)
    queries = encode_real(model, n_queries, kind="query", from_end=True).dicts()
    docs = (Document(f"d{i}", "", vectors=v, position=i) for i, v in
            zip(range(n), corpus.dicts(range(n)), strict=True))
    return docs, queries


def run(quick: bool, sizes: tuple[int, ...] | None = None, model=None) -> dict:
    """With ``model``: its synthetic passages and real queries instead of Zipf vectors."""
    from milco_os.engines import open_engine
    from milco_os.engines.connection import ConnectionSettings
    from milco_os.engines.query import SparseQuery
    from milco_os.index.spec import IngestSpec
    from milco_os.pipeline.ingest import Ingestor
    from milco_os.vectors.sparse import SparseVector

    sizes = sizes or (QUICK_SIZES if quick else FULL_SIZES)
    n_queries = 100 if quick else 300
    if model is None:
        draw = ZipfVectors(seed=1)
        raw = [draw.draw(QUERY_TERMS) for _ in range(n_queries)]
    else:
        raw = milco_documents(model, max(sizes), n_queries)[1]
    queries = [SparseQuery(SparseVector.from_dict(q)) for q in raw]
    points = {}
    with cluster_url() as url:
        engine = open_engine(ConnectionSettings(url=url))
        for n in sizes:
            index = f"bench-scaling-{n}"
            engine.delete_index(index)
            spec = IngestSpec(index=index, model=None)
            docs = documents(n) if model is None else milco_documents(model, max(sizes), 1)[0]
            report = Ingestor(engine, spec, progress=False).run(itertools.islice(docs, n))
            force_merge(engine, index)
            calls = [lambda q=q, i=index: engine.search(i, q, K) for q in queries]
            _, ms = measure(calls)
            points[n] = {**latency_stats(ms), "ingest_docs_per_s": n / report.seconds,
                         "bytes_per_doc": engine.index_info(index)["store_bytes"] / n,
                         "index_bytes": engine.index_info(index)["store_bytes"]}
            engine.delete_index(index)
    small, large = points[min(sizes)], points[max(sizes)]
    growth = max(sizes) / min(sizes)
    return {
        "baseline": f"the {min(sizes):,}-document corpus of the same distribution",
        "settings": {"sizes": list(sizes), "queries": len(queries), "k": K,
                     "vectors": str(model) if model else "Zipf synthetic",
                     "doc_terms": DOC_TERMS, "query_terms": QUERY_TERMS,
                     "zipf_exponent": ZIPF_EXPONENT, "vocabularies": VOCAB},
        "points": {str(n): p for n, p in points.items()},
        "figures": {"documents_ratio": growth,
                    "p50_ratio": large["p50_ms"] / small["p50_ms"],
                    "p95_ratio": large["p95_ms"] / small["p95_ms"],
                    "index_bytes_ratio": large["index_bytes"] / small["index_bytes"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", help="comma-separated corpus sizes [10000,100000]")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None
    print(save_result("scaling", run(args.quick, sizes)))


if __name__ == "__main__":
    main()
