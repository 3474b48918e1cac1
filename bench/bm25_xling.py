"""BM25 baseline for the cross-lingual NTREX-128 check (training/eval_xling.py).

Indexes the 1,997 English lines of an ``eval_xling.py --export DIR`` folder in
OpenSearch (standard analyzer on ``text``), runs each language's held-out
queries as a ``match`` query, and writes TREC runs ``DIR/bm25.{lang}.trec`` for
``eval_xling.py --run bm25=DIR/bm25.{lang}.trec``.

    python training/eval_xling.py --export /tmp/xling
    python bench/bm25_xling.py /tmp/xling            # MILCO_OS_URL or `milco-os cluster up`
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from opensearchpy import helpers

from milco_os.connection import ConnectionSettings
from milco_os.datasets import read_queries

INDEX = "xling-bm25"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    client = ConnectionSettings.from_env().client()
    client.indices.delete(index=INDEX, ignore_unavailable=True)
    mapping = {"mappings": {"properties": {"text": {"type": "text"}}}}
    client.indices.create(index=INDEX, body=mapping)
    docs = [json.loads(line) for line in (args.folder / "corpus.jsonl").open(encoding="utf-8")]
    helpers.bulk(client, ({"_index": INDEX, "_id": d["id"], "text": d["text"]} for d in docs),
                 refresh=True)
    for queries in sorted(args.folder.glob("queries.*.tsv")):
        lang = queries.name.split(".")[1]
        with (args.folder / f"bm25.{lang}.trec").open("w") as run:
            for query in read_queries(queries):
                hits = client.search(index=INDEX, body={
                    "query": {"match": {"text": query.text}}, "size": args.k})["hits"]["hits"]
                for rank, hit in enumerate(hits, 1):
                    run.write(f"{query.id} Q0 {hit['_id']} {rank} {hit['_score']} bm25\n")
        print(f"{lang}: {args.folder / f'bm25.{lang}.trec'}")
    client.indices.delete(index=INDEX)


if __name__ == "__main__":
    main()
