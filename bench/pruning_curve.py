"""Effectiveness vs document pruning on real data, and latency vs query pruning.

1. nDCG@10 (ir-measures) of X->English retrieval on the NTREX-128 articles held out
   of milco-small's training (training/eval_xling.py's set, exact dot products) at
   several document pruning levels, against terms per document:
   ``bench/results/pruning_curve.json`` and ``pruning_curve.png``; and at several query
   pruning levels, the documents pruned as ingest prunes them by default (``queries``).
2. Query latency p50 and recall@10 vs query terms, read from
   ``bench/results/query.json`` (``bench/run.py``): ``latency_vs_pruning.png``.

    python bench/pruning_curve.py --model milco-small
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
sys.path.insert(0, str(REPO))

import eval_xling  # noqa: E402

from milco_os.encoders import SparseEncoder  # noqa: E402
from milco_os.evaluation import evaluate, exact_run, exact_scores  # noqa: E402
from milco_os.vectors.pruning import Pruning, recommended_pruning  # noqa: E402

LEVELS = ["none", "mass:0.3", "mass:0.5", "mass:0.7", "mass:0.85", "mass:0.95",
          "topk:128", "topk:64", "topk:48", "topk:32", "topk:16",
          "threshold:0.05", "threshold:0.1", "threshold:0.2", "threshold:0.3"]
QUERY_LEVELS = ["none", "topk:64", "topk:48", "topk:32", "topk:24", "topk:16", "topk:8"]
RESULTS = REPO / "bench" / "results"


def most_common_pivot_term(vectors: list) -> tuple[str, float]:
    """The pivot term in most documents, and the share of documents it is in."""
    counts = Counter(term for v in vectors for term in v.pivot.terms)
    term, n = counts.most_common(1)[0] if counts else ("", 0)
    return term, n / max(1, len(vectors))


SETS = {"ntrex": eval_xling.ntrex_heldout, "paragraphs": eval_xling.ntrex_paragraphs_heldout}


def effectiveness(model: str, langs: list[str], held_out: str = "ntrex"
                  ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(per document pruning level, per query pruning level with the documents pruned by
    the model's ingest default): nDCG@10 and terms."""
    data = SETS[held_out](eval_xling.Holdout.from_config(eval_xling.DEFAULT_CONFIG), langs)
    encoder = SparseEncoder.from_pretrained(model, device="cpu")
    docs = list(data.corpus(None)())
    doc_vectors = encoder.encode([d.text for d in docs], kind="document")
    query_vectors = encoder.encode([q.text for q in data.queries], kind="query")
    qids, doc_ids = [q.id for q in data.queries], [d.id for d in docs]

    def ndcg(queries: list, documents: list) -> dict[str, float]:
        result = evaluate(exact_run(exact_scores(queries, documents), qids, doc_ids),
                          data.queries, data.qrels, [eval_xling.METRIC])
        return {"ndcg@10": result.average[eval_xling.METRIC],
                **{f"ndcg@10_{lang}": scores[eval_xling.METRIC]
                   for lang, scores in result.per_language.items()}}

    table = {}
    for level in LEVELS:
        pruned = [Pruning.parse(level).apply(v) for v in doc_vectors]
        scores = ndcg(query_vectors, pruned)
        terms = np.mean([len(v.pivot) + len(v.echo) for v in pruned])
        common, share = most_common_pivot_term(pruned)
        table[level] = {**scores, "terms_per_doc": float(terms),
                        "pivot_terms_per_doc": float(np.mean([len(v.pivot) for v in pruned])),
                        "most_common_pivot_term": common, "its_document_share": share}
        print(f"{level:14s} terms/doc {terms:7.1f}  mean nDCG@10 {scores['ndcg@10']:.3f}  "
              f"most common pivot term {common!r} in {share:.1%} of documents")
    documents = recommended_pruning(model)
    indexed = [documents.apply(v) for v in doc_vectors]
    queries = {}
    for level in QUERY_LEVELS:
        pruned = [Pruning.parse(level).apply(v) for v in query_vectors]
        terms = float(np.mean([len(v.pivot) + len(v.echo) for v in pruned]))
        queries[level] = {**ndcg(pruned, indexed), "terms_per_query": terms,
                          "documents": str(documents)}
        print(f"query {level:8s} terms/query {terms:6.1f}  mean nDCG@10 "
              f"{queries[level]['ndcg@10']:.3f} (documents {documents})")
    return table, queries


def plot_effectiveness(table: dict[str, dict[str, float]], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for family, marker in (("mass", "o"), ("topk", "s"), ("threshold", "^")):
        points = sorted((v["terms_per_doc"], v["ndcg@10"], k) for k, v in table.items()
                        if k.startswith(family) or k == "none")
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=family)
        for x, y, label in points:
            ax.annotate(label, (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("terms per document (pivot + echo)")
    ax.set_ylabel("mean nDCG@10, X->English (NTREX-128 held-out articles)")
    ax.set_title("milco-small: effectiveness vs document pruning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot_latency(query: dict, out: Path) -> None:
    rows = query["opensearch"]["queries"]  # "doc=<level> q=<level>" -> figures
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r["query_terms_mean"] for r in rows.values()],
               [r["p50_ms"] for r in rows.values()])
    for label, r in rows.items():
        ax.annotate(f"{label}\nR@10={r['recall_at_10']:.2f}", (r["query_terms_mean"], r["p50_ms"]),
                    fontsize=6, textcoords="offset points", xytext=(3, 3))
    bm25 = query["figures"]["bm25_p50_ms"]
    ax.axhline(bm25, linestyle="--", color="grey", label=f"BM25 match p50 {bm25:.1f} ms")
    ax.set_xlabel("query terms sent")
    ax.set_ylabel("p50 latency (ms), OpenSearch, one client")
    ax.set_title("latency vs pruning (5,000 documents)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--langs", default=",".join(eval_xling.LANGUAGES))
    parser.add_argument("--set", dest="held_out", choices=sorted(SETS), default="ntrex",
                        help="held-out lines (ntrex) or paragraphs of 3 lines (paragraphs)")
    args = parser.parse_args()
    table, queries = effectiveness(args.model, args.langs.split(","), args.held_out)
    record = {"benchmark": "pruning_curve", "model": args.model, "set": args.held_out,
              "command": " ".join(["python", "bench/pruning_curve.py", *sys.argv[1:]]),
              "levels": table, "queries": queries}
    name = "pruning_curve" if args.held_out == "ntrex" else f"pruning_curve_{args.held_out}"
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1))
    plot_effectiveness(table, RESULTS / f"{name}.png")
    plot_latency(json.loads((RESULTS / "query.json").read_text()),
                 RESULTS / "latency_vs_pruning.png")


if __name__ == "__main__":
    main()
