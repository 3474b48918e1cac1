"""X->English retrieval on the two sets held out of milco-small's training, against BM25.

- NTREX-128: queries = the lines of language X in the first ``holdout_documents``
  articles (24 articles, 356 lines), corpus = all 1,997 English lines, relevant = the
  aligned English line.
- Tatoeba: queries = the last ``holdout`` pairs of language X (200), corpus = the
  distinct English sentences of those pairs over every evaluated language, relevant =
  every corpus document holding the query's English sentence (compared after Unicode
  NFKC, whitespace folding and case folding, so near-identical copies are never
  counted as misses).

The holdouts are read from the training config, so the sets are what training left
out. Each model is scored per view (pivot, echo, pivot+echo) by exact in-memory dot
products; with a cluster (``MILCO_OS_URL``, or ``--url``), one index per set holds the
``--engine-model`` vectors and the text, and that model's views and BM25 (``match``
on the index's text field) are searched through it. The metric is nDCG@10
(ir-measures), per language and as the mean over languages. ``--out DIR`` writes
``xling.json`` and ``xling.md`` (the README's tables). ``--local`` runs the engine rows
and BM25 on the embedded local engine instead of a cluster.

    MILCO_OS_URL=$(milco-os cluster up --name xling) \\
    python training/eval_xling.py --model runs/milco-small-sct/checkpoint-300 --out runs/xling

``--export DIR`` writes both sets as BEIR folders (``DIR/ntrex``, ``DIR/tatoeba``) for
``milco-os evaluate --dataset DIR/ntrex``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

import xling_diagnostics as diagnostics  # noqa: E402

from milco_os import evaluation as ev  # noqa: E402
from milco_os.core.errors import InputError  # noqa: E402
from milco_os.evaluation.datasets import EvalDataset, Qrels, Query  # noqa: E402
from milco_os.text.corpus import Document  # noqa: E402
from milco_os.training.data import (  # noqa: E402
    ntrex_heldout_mask,
    ntrex_lines,
    tatoeba_lines,
    text_key,
)

# language: (NTREX-128 code, Tatoeba code)
LANGUAGES = {"zh": ("zho-CN", "cmn"), "ar": ("arb", "ara"), "hi": ("hin", "hin"),
             "ru": ("rus", "rus"), "th": ("tha", "tha"), "de": ("deu", "deu"),
             "es": ("spa", "spa"), "ja": ("jpn", "jpn"), "ko": ("kor", "kor"),
             "fr": ("fra", "fra"), "fa": ("fas", "pes"), "tr": ("tur", "tur"),
             "vi": ("vie", "vie")}
DEFAULT_CONFIG = REPO / "training" / "configs" / "milco-small.yaml"


def repo_relative(path: Path) -> str:
    """``path`` as written from the repository root when it is inside it (results travel)."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
METRIC = "nDCG@10"
VIEWS = {"pivot": ("pivot",), "echo": ("echo",), "pivot+echo": ("pivot", "echo")}
SWEEP_VIEWS = {"pivot": "pivot", "echo": "echo", "pivot+echo": "both"}  # Sweep's names
SETS = ("ntrex", "tatoeba", "paragraphs")


@dataclass(frozen=True)
class Holdout:
    """Where the held-out sets come from and how large they are (the training config's)."""

    ntrex: Path
    ntrex_documents: int
    tatoeba: Path
    tatoeba_pairs: int

    @classmethod
    def from_config(cls, path: Path) -> Holdout:
        sources = {s.get("kind"): s for s in
                   yaml.safe_load(path.read_text(encoding="utf-8"))["data"]["parallel"]}
        missing = sorted({"ntrex", "tatoeba"} - set(sources))
        if missing:
            raise InputError(f"{path}: data.parallel has no {' or '.join(missing)} source")
        ntrex, tatoeba = sources["ntrex"], sources["tatoeba"]
        if not ntrex.get("holdout_documents") or not tatoeba.get("holdout"):
            raise InputError(f"{path}: the ntrex source needs holdout_documents and the "
                             "tatoeba source holdout (nothing is held out otherwise)")

        def where(source: dict[str, Any]) -> Path:
            given = Path(os.path.expanduser(source["path"]))
            return given if given.is_absolute() else (REPO / given).resolve()

        return cls(where(ntrex), int(ntrex["holdout_documents"]), where(tatoeba),
                   int(tatoeba["holdout"]))


def _dataset(name: str, queries: list[Query], english: Sequence[str], ids: Sequence[str],
             relevant_english: dict[str, str]) -> EvalDataset:
    """Queries over an English corpus; a query's relevant set is every corpus document
    whose sentence has the same :func:`text_key` as its English side."""
    by_key: dict[str, list[str]] = {}
    for doc_id, text in zip(ids, english, strict=True):
        by_key.setdefault(text_key(text), []).append(doc_id)
    qrels: Qrels = {q: dict.fromkeys(by_key[text_key(e)], 1)
                    for q, e in relevant_english.items()}

    def corpus() -> Iterator[Document]:
        for doc_id, text in zip(ids, english, strict=True):
            yield Document(id=doc_id, text=text, lang="en")

    return EvalDataset(name, tuple(queries), qrels, {None: corpus})


def ntrex_heldout(holdout: Holdout, langs: Sequence[str]) -> EvalDataset:
    """NTREX-128: held-out articles of every language against all English lines."""
    mask = ntrex_heldout_mask(holdout.ntrex, holdout.ntrex_documents)
    queries, relevant = [], {}
    english: list[str] = []
    for lang in langs:
        english, translated = ntrex_lines(holdout.ntrex, LANGUAGES[lang][0])
        for line in (i for i, held in enumerate(mask) if held):
            qid = f"{lang}/{line}"
            queries.append(Query(qid, translated[line], lang))
            relevant[qid] = english[line]
    return _dataset("ntrex128-heldout", queries, english, [str(i) for i in range(len(english))],
                    relevant)


PARAGRAPH_LINES = 3  # consecutive lines of one article make a paragraph


def paragraphs(document_ids: Sequence[str]) -> list[list[int]]:
    """Line numbers grouped into paragraphs of up to ``PARAGRAPH_LINES`` consecutive lines
    of the same article (an article's last paragraph may be shorter)."""
    groups: list[list[int]] = []
    for line, doc in enumerate(document_ids):
        if groups and document_ids[groups[-1][0]] == doc and len(groups[-1]) < PARAGRAPH_LINES:
            groups[-1].append(line)
        else:
            groups.append([line])
    return groups


def ntrex_paragraphs_heldout(holdout: Holdout, langs: Sequence[str]) -> EvalDataset:
    """NTREX-128 as paragraphs (users index paragraphs): each held-out article's paragraphs
    in language X against the English paragraphs of all 123 articles."""
    ids = (holdout.ntrex / "DOCUMENT_IDS.tsv").read_text(encoding="utf-8").splitlines()
    mask = ntrex_heldout_mask(holdout.ntrex, holdout.ntrex_documents)
    groups = paragraphs(ids)
    queries, relevant, english = [], {}, []
    for lang in langs:
        english, translated = ntrex_lines(holdout.ntrex, LANGUAGES[lang][0])
        for number, group in enumerate(groups):
            if mask[group[0]]:
                qid = f"{lang}/p{number}"
                queries.append(Query(qid, " ".join(translated[i] for i in group), lang))
                relevant[qid] = " ".join(english[i] for i in group)
    corpus = [" ".join(english[i] for i in group) for group in groups]
    return _dataset("ntrex128-paragraphs-heldout", queries, corpus,
                    [f"p{n}" for n in range(len(groups))], relevant)


def tatoeba_heldout(holdout: Holdout, langs: Sequence[str]) -> EvalDataset:
    """Tatoeba: the last pairs of every language against the union of their English sides."""
    queries, relevant = [], {}
    english: dict[str, str] = {}  # sentence -> document id, in order of first appearance
    for lang in langs:
        eng, translated = tatoeba_lines(holdout.tatoeba, LANGUAGES[lang][1])
        start = max(len(eng) - holdout.tatoeba_pairs, 0)
        for line in range(start, len(eng)):
            if not (eng[line].strip() and translated[line].strip()):
                continue
            qid = f"{lang}/{line}"
            queries.append(Query(qid, translated[line], lang))
            relevant[qid] = eng[line]
            english.setdefault(eng[line].strip(), f"t{len(english)}")
    return _dataset("tatoeba-heldout", queries, list(english), list(english.values()), relevant)


def export(out: Path, datasets: dict[str, EvalDataset]) -> None:
    """Each set as a BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv."""
    for name, data in datasets.items():
        folder = out / name
        (folder / "qrels").mkdir(parents=True, exist_ok=True)
        with (folder / "corpus.jsonl").open("w", encoding="utf-8") as f:
            for doc in data.corpus(None)():
                f.write(json.dumps({"_id": doc.id, "text": doc.text}, ensure_ascii=False) + "\n")
        with (folder / "queries.jsonl").open("w", encoding="utf-8") as f:
            for q in data.queries:
                f.write(json.dumps({"_id": q.id, "text": q.text, "lang": q.lang},
                                   ensure_ascii=False) + "\n")
        (folder / "qrels" / "test.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(
                f"{q}\t{d}\t{r}\n" for q, docs in data.qrels.items() for d, r in docs.items()),
            encoding="utf-8")


def exact_rows(label: str, encoder: Any, data: EvalDataset) -> dict[str, ev.Evaluation]:
    """``{"<label> [view]": evaluation}`` by exact dot products, one row per view."""
    docs = list(data.corpus(None)())
    doc_vectors = encoder.encode([d.text for d in docs], kind="document")
    query_vectors = encoder.encode([q.text for q in data.queries], kind="query")
    qids, doc_ids = [q.id for q in data.queries], [d.id for d in docs]
    return {f"{label} [{view}]": ev.evaluate(
                ev.exact_run(ev.exact_scores(query_vectors, doc_vectors, views), qids, doc_ids),
                data.queries, data.qrels, [METRIC])
            for view, views in VIEWS.items()}


def engine_rows(label: str, encoder: Any, model: str, data: EvalDataset, index: str,
                engine: Any, views: Sequence[str]) -> dict[str, ev.Evaluation]:
    """The model's views and BM25 through one index built from ``data``."""
    where = "OpenSearch" if engine.flavour == "opensearch" else (
        engine.flavour.capitalize() if engine.flavour else "local engine")
    if engine.index_exists(index):  # built with another model: never reuse it
        engine.delete_index(index)
    sweep = ev.Sweep(engine, data, model=model, encoder=encoder, metrics=[METRIC],
                     build=ev.BuildOptions(), log=lambda line: print(line, file=sys.stderr))
    try:
        rows = {f"{label} [{view}] ({where})": sweep.run(
                    ev.System(index, views=SWEEP_VIEWS[view])).evaluation for view in views}
        rows[f"BM25 ({where}, same index)"] = sweep.run(ev.System(index, mode="bm25")
                                                        ).evaluation
    finally:
        engine.delete_index(index)
    return rows


def diagnose(encoder: Any, holdout: Holdout, langs: Sequence[str], config: Path
             ) -> dict[str, Any]:
    """Alignment overlap on the NTREX held-out lines and term statistics over 1,000 held-out
    English passages (NTREX held-out lines, then Tatoeba held-out English sentences), of
    the model and of the teacher."""
    from milco_os.encoders import SparseEncoder

    teacher_path = yaml.safe_load(config.read_text(encoding="utf-8"))["teacher"]
    teacher = SparseEncoder.from_pretrained((REPO / os.path.expanduser(teacher_path)).resolve(),
                                            device="cpu")
    mask = ntrex_heldout_mask(holdout.ntrex, holdout.ntrex_documents)
    pairs, english = {}, []
    for lang in langs:
        english, translated = ntrex_lines(holdout.ntrex, LANGUAGES[lang][0])
        pairs[lang] = [(translated[i], english[i]) for i, held in enumerate(mask) if held]
    tatoeba_english = [d.text for d in tatoeba_heldout(holdout, langs).corpus(None)()]
    passages = list(dict.fromkeys([e for _, e in pairs[langs[0]]] + tatoeba_english))[:1000]
    return {"alignment_overlap_top20": diagnostics.alignment_overlap(encoder, teacher, pairs),
            "alignment_overlap_top20_english_side": diagnostics.english_side_overlap(
                encoder, teacher, [e for _, e in pairs[langs[0]]]),
            "term_statistics": diagnostics.term_statistics(encoder, passages),
            # what copying the teacher would give: its own spread terms and punctuation
            "teacher_term_statistics": diagnostics.term_statistics(teacher, passages)}


def table_record(rows: dict[str, ev.Evaluation], langs: Sequence[str]) -> dict[str, Any]:
    record = {}
    for label, evaluation in rows.items():
        per_lang = {lang: evaluation.per_language[lang][METRIC] for lang in langs}
        record[label] = {**per_lang, "mean": evaluation.average[METRIC]}
    return record


def markdown(name: str, record: dict[str, dict[str, float]], langs: Sequence[str],
             data: EvalDataset) -> str:
    n_queries = len(data.queries) // len(langs)
    n_docs = sum(1 for _ in data.corpus(None)())
    head = {"ntrex": f"NTREX-128 held-out articles: {n_queries} queries per language, "
                     f"{n_docs:,} English lines",
            "tatoeba": f"Tatoeba held-out pairs: {n_queries} queries per language, "
                       f"{n_docs:,} distinct English sentences",
            "paragraphs": f"NTREX-128 held-out articles as paragraphs of up to "
                          f"{PARAGRAPH_LINES} lines: {n_queries} queries per language, "
                          f"{n_docs:,} English paragraphs"}[name]
    rows = [[label, *(values[lang] for lang in [*langs, "mean"])]
            for label, values in record.items()]
    return f"{METRIC}, X->English, {head}\n\n" + ev.markdown_table(
        ["system", *langs, "mean"], rows)


def margins(record: dict[str, dict[str, float]], label: str, langs: Sequence[str]
            ) -> dict[str, float]:
    """Row ``label`` minus BM25, per language and for the mean (the +0.15 goal)."""
    bm25 = next(row for name, row in record.items() if name.startswith("BM25 ("))
    return {lang: record[label][lang] - bm25[lang] for lang in [*langs, "mean"]}


def label_of(model: str) -> str:
    """A model's row label: its folder and parent (``milco-small-sct/checkpoint-300``)."""
    return f"{Path(model).parent.name}/{Path(model).name}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="model folder (repeatable)")
    parser.add_argument("--engine-model", help="model searched through the engine, with BM25 "
                                               "on the same index [default: the last --model]")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="training config whose holdouts define the sets")
    parser.add_argument("--langs", default=",".join(LANGUAGES))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--url", help="cluster for BM25 and the engine run [default: "
                                      "MILCO_OS_URL]; without one (or --local) only exact "
                                      "rows are given")
    parser.add_argument("--local", action="store_true",
                        help="run BM25 and the engine rows on the embedded local engine (in a "
                             "temporary folder) instead of a cluster")
    parser.add_argument("--engine-views", default="pivot+echo",
                        help="views searched through the engine, comma-separated, of "
                             f"{', '.join(VIEWS)} (every view is scored exactly)")
    parser.add_argument("--index-prefix", default="xling-heldout")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for encoding")
    parser.add_argument("--dense", action="store_true",
                        help="add each model's own encoder used densely (mean pooling) as a "
                             "reference row")
    parser.add_argument("--diagnostics", action="store_true",
                        help="for each model: top-20 alignment overlap with the teacher on "
                             "held-out pairs, and pivot term statistics over held-out passages")
    parser.add_argument("--out", type=Path, help="write xling.json and xling.md here")
    parser.add_argument("--export", type=Path, help="write the sets as BEIR folders and exit")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except InputError as exc:
        parser.exit(2, f"eval_xling: {exc}\n")


def open_evaluation_engine(args: argparse.Namespace) -> Any:
    """The engine of the engine rows: a temporary local index (``--local``), the cluster
    at ``--url`` or ``MILCO_OS_URL``, or None (exact rows only)."""
    from milco_os.engines import open_engine
    from milco_os.engines.connection import ConnectionSettings

    if args.local:
        return open_engine(None, engine="local",
                           local_path=tempfile.mkdtemp(prefix="milco-os-xling-"))
    url = args.url or os.environ.get("MILCO_OS_URL")
    return open_engine(ConnectionSettings(url=url)) if url else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    unknown = sorted(set(langs) - set(LANGUAGES))
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if unknown or set(sets) - set(SETS):
        raise InputError(f"--langs/--sets: unknown {sorted(set(sets) - set(SETS)) + unknown}; "
                         f"languages are {', '.join(LANGUAGES)}, sets {', '.join(SETS)}")
    engine_views = [v.strip() for v in args.engine_views.split(",") if v.strip()]
    if set(engine_views) - set(VIEWS):
        raise InputError(f"--engine-views: unknown {sorted(set(engine_views) - set(VIEWS))}; "
                         f"views are {', '.join(VIEWS)}")
    holdout = Holdout.from_config(args.config)
    builders = {"ntrex": ntrex_heldout, "tatoeba": tatoeba_heldout,
                "paragraphs": ntrex_paragraphs_heldout}
    datasets = {name: builders[name](holdout, langs) for name in sets}
    if args.export:
        export(args.export, datasets)
        return {}
    import torch

    from milco_os.encoders import SparseEncoder

    torch.set_num_threads(args.threads)
    os.environ["MILCO_OS_THREADS"] = os.environ["MILCO_OS_BATCH_THREADS"] = str(args.threads)
    if not args.model:
        raise InputError("give --model (repeatable)")
    models = {label_of(m): str(m) for m in args.model}
    engine_model = args.engine_model or (args.model[-1] if args.model else None)
    engine = open_evaluation_engine(args)
    rows: dict[str, dict[str, ev.Evaluation]] = {name: {} for name in sets}
    diagnosed: dict[str, dict[str, Any]] = {}
    started = time.time()
    for label, folder in models.items():
        encoder = ev.CachingEncoder(SparseEncoder.from_pretrained(folder, device="cpu"))
        for name, data in datasets.items():
            rows[name].update(exact_rows(label, encoder, data))
            if engine and folder == str(engine_model):
                rows[name].update(engine_rows(label, encoder, folder, data,
                                              f"{args.index_prefix}-{name}", engine,
                                              engine_views))
            if args.dense:
                rows[name].update(diagnostics.dense_rows(label, folder, data))
            print(f"{label} on {name}: done after {time.time() - started:.0f} s",
                  file=sys.stderr)
        if args.diagnostics:
            diagnosed[label] = diagnose(encoder, holdout, langs, args.config)
    record = {"metric": METRIC, "languages": langs, "config": repo_relative(args.config),
              "command": " ".join(["python", "training/eval_xling.py", *sys.argv[1:]]),
              "seconds": round(time.time() - started),
              "sets": {name: table_record(r, langs) for name, r in rows.items()}}
    if engine and engine_model:
        record["margin_over_bm25"] = {
            name: margins(t, f"{label_of(engine_model)} [pivot+echo]", langs)
            for name, t in record["sets"].items()}
    if diagnosed:
        record["diagnostics"] = diagnosed
    text = "\n\n".join(markdown(name, record["sets"][name], langs, datasets[name])
                       for name in sets)
    if diagnosed:
        text += "\n\n" + "\n".join(f"{label}: {json.dumps(d, ensure_ascii=False)}"
                                    for label, d in diagnosed.items())
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "xling.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        (args.out / "xling.md").write_text(text + "\n", encoding="utf-8")
    return record


if __name__ == "__main__":
    main()
