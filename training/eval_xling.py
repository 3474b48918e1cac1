"""Cross-lingual retrieval check on the NTREX-128 lines held out of alignment training.

For each language X: queries = the last ``--holdout`` lines of X, corpus = all 1,997
English lines, one relevant document = the aligned English line. Scores are exact
in-memory sparse dot products (pivot view + echo view, as the model scores), so no
search cluster is needed; the metric is nDCG@10 (ir-measures).

Examples::

    python training/eval_xling.py --model runs/milco-small-sap/checkpoint-800 \\
        --untrained ~/.cache/milco-os/e5-small ../shared/models/splade-tiny
    # BM25 (or any engine) runs from a cluster, one TREC run file per language:
    python training/eval_xling.py --export runs/xling     # queries/corpus/qrels to index
    python training/eval_xling.py --run bm25=runs/xling/bm25.{lang}.trec

Languages default to zh, ar, hi, ru, th, de, es.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from milco_os.sparse import to_csr  # noqa: E402
from milco_os.training.data import ntrex_lines  # noqa: E402

NTREX_CODES = {"zh": "zho-CN", "ar": "arb", "hi": "hin", "ru": "rus", "th": "tha", "de": "deu",
               "es": "spa"}
DEFAULT_NTREX = Path(__file__).resolve().parents[2] / "shared" / "data" / "ntrex128"
TOP_K = 100


def held_out(ntrex: Path, lang: str, holdout: int) -> tuple[list[str], list[str]]:
    """(queries, corpus): the last ``holdout`` lines of ``lang`` and all English lines."""
    english, translated = ntrex_lines(ntrex, NTREX_CODES.get(lang, lang))
    return translated[-holdout:], english


def query_ids(lang: str, n_corpus: int, holdout: int) -> list[str]:
    """Query i is aligned with English line n_corpus - holdout + i."""
    return [f"{lang}-{n_corpus - holdout + i}" for i in range(holdout)]


def qrels_for(lang: str, n_corpus: int, holdout: int) -> dict[str, dict[str, int]]:
    return {qid: {qid.split("-")[1]: 1} for qid in query_ids(lang, n_corpus, holdout)}


def exact_scores(q: Sequence, d: Sequence, views: Sequence[str] = ("pivot", "echo")
                 ) -> np.ndarray:
    """[Q, D] exact scores of encoded queries and documents: the sum of the views' dots."""
    scores = np.zeros((len(q), len(d)))
    for view in views:
        width = 1 + max((int(v.view(view).ids.max()) for v in q + d if len(v.view(view))),
                        default=0)
        scores += (to_csr(q, view, width, np.float64) @ to_csr(d, view, width, np.float64).T
                   ).toarray()
    return scores


def run_from_scores(scores: np.ndarray, qids: list[str]) -> dict[str, dict[str, float]]:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
    return {qid: {str(j): float(scores[i, j]) for j in top[i]} for i, qid in enumerate(qids)}


def ndcg10(qrels: dict, run: dict) -> float:
    import ir_measures
    from ir_measures import nDCG

    return float(ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10])


def read_trec_run(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        qid, _, doc, _, score, *_ = line.split()
        run.setdefault(qid, {})[doc] = float(score)
    return run


def untrained_folder(encoder: str, head: str, seed: int) -> Path:
    """A fresh MILCO from the two backbones (connector initialised with ``seed``), saved."""
    import torch

    from milco_os.modeling import MilcoModel

    torch.manual_seed(seed)
    model = MilcoModel.from_backbones(encoder, head, echo=False)
    return model.save_pretrained(Path(tempfile.mkdtemp(prefix="milco-untrained-")))


def export(out: Path, ntrex: Path, langs: list[str], holdout: int) -> None:
    """Write corpus.jsonl, queries.<lang>.tsv and qrels.<lang>.tsv for an engine run."""
    out.mkdir(parents=True, exist_ok=True)
    _, corpus = held_out(ntrex, langs[0], holdout)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(corpus):
            f.write(json.dumps({"id": str(i), "text": text}, ensure_ascii=False) + "\n")
    for lang in langs:
        queries, _ = held_out(ntrex, lang, holdout)
        qids = query_ids(lang, len(corpus), holdout)
        (out / f"queries.{lang}.tsv").write_text(
            "".join(f"{q}\t{t}\n" for q, t in zip(qids, queries, strict=True)), encoding="utf-8")
        (out / f"qrels.{lang}.tsv").write_text(
            "".join(f"{q}\t0\t{d}\t1\n" for q, docs in qrels_for(lang, len(corpus), holdout).items()
                    for d in docs), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="model folder (repeatable)")
    parser.add_argument("--untrained", nargs=2, metavar=("ENCODER", "HEAD"),
                        help="also evaluate a fresh MILCO built from these backbones")
    parser.add_argument("--seed", type=int, default=42, help="connector init of --untrained")
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=PATTERN",
                        help="external TREC runs, PATTERN with {lang} (e.g. BM25 from a cluster)")
    parser.add_argument("--export", type=Path, help="write queries/corpus/qrels here and exit")
    parser.add_argument("--ntrex", type=Path, default=DEFAULT_NTREX)
    parser.add_argument("--langs", default=",".join(NTREX_CODES))
    parser.add_argument("--holdout", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--views", default="pivot+echo",
                        help="comma-separated scorings, each a +-joined set of views, e.g. "
                             "'pivot,echo,pivot+echo' for one row each (default pivot+echo)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    langs = args.langs.split(",")
    if args.export:
        export(args.export, args.ntrex, langs, args.holdout)
        return {}
    systems: dict[str, object] = {}
    if args.untrained:
        systems["untrained"] = untrained_folder(*args.untrained, args.seed)
    systems.update({f"{Path(m).parent.name}/{Path(m).name}": Path(m) for m in args.model})
    scorings = [tuple(v.split("+")) for v in args.views.split(",")]
    table: dict[str, dict[str, float]] = {}
    from milco_os.encoder import SparseEncoder

    for label, folder in systems.items():
        encoder = SparseEncoder.from_pretrained(folder, device="cpu")
        corpus = held_out(args.ntrex, langs[0], args.holdout)[1]
        docs = encoder.encode(corpus, kind="document")
        rows = {views: f"{label} [{'+'.join(views)}]" if len(scorings) > 1 else label
                for views in scorings}
        for row in rows.values():
            table[row] = {}
        for lang in langs:
            queries = encoder.encode(held_out(args.ntrex, lang, args.holdout)[0], kind="query")
            qids = query_ids(lang, len(corpus), args.holdout)
            for views, row in rows.items():
                run = run_from_scores(exact_scores(queries, docs, views), qids)
                table[row][lang] = ndcg10(qrels_for(lang, len(corpus), args.holdout), run)
    for item in args.run:
        label, _, pattern = item.partition("=")
        table[label] = {}
        for lang in langs:
            n_corpus = len(held_out(args.ntrex, lang, args.holdout)[1])
            table[label][lang] = ndcg10(qrels_for(lang, n_corpus, args.holdout),
                                        read_trec_run(Path(pattern.format(lang=lang))))
    print_table(table, langs)
    if args.json:
        args.json.write_text(json.dumps(table, indent=2), encoding="utf-8")
    return table


def print_table(table: dict[str, dict[str, float]], langs: list[str]) -> None:
    print("nDCG@10 (NTREX-128 held-out X -> English)")
    print(f"{'system':<44}" + "".join(f"{lang:>7}" for lang in langs) + f"{'mean':>7}")
    for label, row in table.items():
        values = [row[lang] for lang in langs]
        print(f"{label:<44}" + "".join(f"{v:>7.3f}" for v in values)
              + f"{float(np.mean(values)):>7.3f}")


if __name__ == "__main__":
    main()
