"""Ingestion throughput: milco-os ``Ingestor`` vs a plain opensearch-py ``helpers.bulk``.

Both index the same pre-encoded documents (splade-tiny vectors of English
sentences, with their text) into fresh indexes with the same MILCO mapping on
the same cluster, 500 documents per bulk request, refresh included. The
baseline gets its ``_source`` objects ready-made (outside the timing); the
Ingestor starts from the records and does its own conversion, batching,
retries and background upload. Runs are interleaved; the best is kept.

    MILCO_OS_URL=http://127.0.0.1:9200 python bench/bench_ingest.py [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import best_of, cluster_url, encoded, save_result

BULK_DOCS = 500


def run(quick: bool, model: Path | None = None) -> dict:
    from opensearchpy import helpers

    from milco_os.engines import open_engine
    from milco_os.engines.connection import ConnectionSettings
    from milco_os.index.spec import BatchSizes, IngestSpec
    from milco_os.pipeline.documents import build_source
    from milco_os.pipeline.ingest import Ingestor
    from milco_os.text.corpus import Document
    from milco_os.vectors.sparse import SparseVector

    n = 5000 if quick else 20000
    if model is None:
        texts, vectors = encoded("document", n)
    else:  # the trained MILCO's pivot view, synthetic passages (milco_corpus.py)
        from milco_corpus import pivot_corpus

        texts, vectors, _, _ = pivot_corpus(model, n, 1)
    records = [Document(f"d{i}", t, vectors={"pivot": v}) for i, (t, v) in
               enumerate(zip(texts, vectors, strict=True))]
    sources = [build_source(r.id, 0, SparseVector.from_dict(r.vectors), text=r.text)
               for r in records]
    meta = {"model": "splade-tiny", "views": ["pivot", "echo"], "pruning": "none"}
    with cluster_url() as url:
        engine = open_engine(ConnectionSettings(url=url))
        client = engine.client

        def fresh(index: str) -> str:
            engine.delete_index(index)
            engine.create_index(index, meta=meta, refresh_interval="30s")
            return index

        def ingestor() -> None:
            spec = IngestSpec(index=fresh("bench-ingest-milco"),
                              batch=BatchSizes(encode=BULK_DOCS, bulk_docs=BULK_DOCS))
            report = Ingestor(engine, spec, progress=False).run(records)
            assert report.indexed == n, report.summary()

        def plain_bulk() -> None:
            index = fresh("bench-ingest-bulk")
            actions = ({"_index": index, "_id": f"{s['doc_id']}#0", "_source": s}
                       for s in sources)
            ok, errors = helpers.bulk(client, actions, chunk_size=BULK_DOCS,
                                      max_chunk_bytes=5_000_000)
            assert ok == n and not errors, errors
            engine.refresh(index)

        seconds = best_of(3, {"milco-os": ingestor, "helpers.bulk": plain_bulk})
        for index in ("bench-ingest-milco", "bench-ingest-bulk"):
            engine.delete_index(index)
    ours, theirs = n / seconds["milco-os"], n / seconds["helpers.bulk"]
    return {
        "baseline": "opensearch-py helpers.bulk of the same documents, same mapping and cluster",
        "settings": {"documents": n, "bulk_docs": BULK_DOCS,
                     "vectors": f"{model or 'splade-tiny'} pivot",
                     "mean_terms": sum(map(len, vectors)) / n},
        "figures": {"milco_os_docs_per_s": ours, "bulk_docs_per_s": theirs,
                    "ratio": ours / theirs, "goal_ratio": 0.9, "seconds": seconds},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    print(save_result("ingest", run(parser.parse_args().quick)))


if __name__ == "__main__":
    main()
