"""Evaluation: ir-measures agreement, per-language averages, run files, the CLI.

A small BEIR collection (English and German queries over one corpus) is written
to a temporary folder, indexed with a tiny random MILCO, and searched through
the same :class:`Searcher` users use, on the real OpenSearch node and on the
local engine.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import ir_measures
import numpy as np
import pytest
from click.testing import CliRunner

from milco_os.cli import main
from milco_os.core.errors import InputError
from milco_os.encoders import SparseEncoder
from milco_os.engines import open_engine
from milco_os.engines.connection import ConnectionSettings
from milco_os.evaluation import (
    BM25Searcher,
    BuildOptions,
    CachingEncoder,
    Sweep,
    best_per_document,
    compare_runs,
    evaluate,
    exact_run,
    exact_scores,
    markdown_table,
    read_trec_run,
    sweep_systems,
    write_trec_run,
)
from milco_os.evaluation.datasets import DatasetError, Query, load_dataset
from milco_os.index.spec import EncodeFields, IngestSpec
from milco_os.models.presets import init_model
from milco_os.pipeline.ingest import Ingestor
from milco_os.pipeline.search import Searcher

METRICS = ["nDCG@10", "R@100", "RR@10"]
WORDS = {
    "en": ["the", "city", "music", "house", "people", "world", "news", "year", "time", "first",
           "greatest", "america"],
    "de": ["die", "stadt", "welt", "und", "das", "ist", "ein", "eine", "der", "musik", "haus",
           "leute"],
}


def write_beir(root: Path, seed: int = 0, n_docs: int = 40) -> dict:
    """A BEIR folder: corpus.jsonl, queries.jsonl (3 en + 5 de), qrels/test.tsv."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    docs = []
    for i in range(n_docs):
        lang = "en" if i % 2 else "de"
        words = rng.choice(WORDS[lang], size=8)
        docs.append({"_id": f"doc{i}", "title": f"Title {i}",
                     "text": " ".join(words).capitalize()})
    queries = [{"_id": f"q{i}", "lang": "en" if i < 3 else "de",
                "text": " ".join(rng.choice(WORDS["en" if i < 3 else "de"], size=3))}
               for i in range(8)]
    qrels = {q["_id"]: {f"doc{j}": int(rng.integers(1, 3))
                        for j in rng.choice(n_docs, size=4, replace=False)} for q in queries}
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{r}" for q, ds in qrels.items()
                                              for d, r in ds.items()]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return {"docs": docs, "queries": queries, "qrels": qrels}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    # Built-in small vocabularies keep vectors short (the real ones give ~25k terms each).
    return init_model("tiny", tmp_path_factory.mktemp("model"), seed=3, assets=None)


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> SparseEncoder:
    return SparseEncoder.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("beir") / "fixture"
    write_beir(root)
    return root


@pytest.fixture(scope="module")
def cluster_index(cluster_url: str, beir: Path, model_dir: Path, encoder: SparseEncoder):
    """The fixture corpus indexed on the real node: (engine, index name)."""
    engine = open_engine(ConnectionSettings(url=cluster_url))
    index = f"test-eval-{uuid.uuid4().hex[:10]}"
    data = load_dataset(str(beir))
    Ingestor(engine, IngestSpec(index=index, model=str(model_dir)), encoder,
             progress=False).run(data.corpus(None)())
    yield engine, index
    engine.delete_index(index)


def direct(qrels: dict, run: dict, metrics=METRICS) -> dict[str, float]:
    """ir-measures on its own: the reference every evaluation must equal."""
    scores = ir_measures.calc_aggregate([ir_measures.parse_measure(m) for m in metrics],
                                        qrels, run)
    return {str(m): float(v) for m, v in scores.items()}


def assert_same_run(run: dict, expected: dict) -> None:
    """Same documents per query, scores equal up to float32 summation order in Lucene
    (the runs hold every matching document, so no near-tie sits at a cut-off)."""
    assert {q: set(docs) for q, docs in run.items()} == \
        {q: set(docs) for q, docs in expected.items()}
    for qid, docs in expected.items():
        assert [run[qid][d] for d in docs] == pytest.approx(list(docs.values()), rel=1e-6)


@pytest.mark.cluster
def test_evaluate_equals_ir_measures_on_the_same_run(cluster_index, beir, encoder):
    engine, index = cluster_index
    data = load_dataset(str(beir))
    searcher = Searcher(engine, index, encoder)
    result = evaluate(searcher, data.queries, data.qrels, METRICS)
    # The run is what the user's search path returns, best passage per document.
    assert_same_run(result.run, {q.id: best_per_document(searcher.search([q.text], 100)[0])
                                 for q in data.queries})
    assert all(result.run[q.id] for q in data.queries)
    assert all(len(set(docs.values())) > 5 for docs in result.run.values())  # real rankings
    assert result.overall == pytest.approx(direct(data.qrels, result.run))
    assert set(result.cost) >= {"latency_p50_ms", "latency_p95_ms", "qps", "query_terms_mean"}


@pytest.mark.cluster
def test_per_language_scores_and_average_over_languages(cluster_index, beir, encoder):
    engine, index = cluster_index
    data = load_dataset(str(beir))
    result = evaluate(Searcher(engine, index, encoder), data.queries, data.qrels, METRICS)
    by_lang = {}
    for lang in ("en", "de"):
        ids = {q.id for q in data.queries if q.lang == lang}
        by_lang[lang] = direct({q: r for q, r in data.qrels.items() if q in ids},
                               {q: r for q, r in result.run.items() if q in ids})
        assert result.per_language[lang] == pytest.approx(by_lang[lang])
    for metric in METRICS:  # languages weigh equally (3 English vs 5 German queries)
        assert result.average[metric] == pytest.approx(
            (by_lang["en"][metric] + by_lang["de"][metric]) / 2)
    table = result.table()
    assert table.splitlines()[0].split() == ["lang", *METRICS]
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["de", "en", "avg"]


def test_judged_queries_without_results_score_zero():
    queries = [Query("a", "x", "en"), Query("b", "y", "en"), Query("c", "unjudged", "en")]
    qrels = {"a": {"d1": 1}, "b": {"d2": 1}}
    result = evaluate({"a": {"d1": 2.0}}, queries, qrels, ["nDCG@10"])
    assert result.per_query == {"a": {"nDCG@10": 1.0}, "b": {"nDCG@10": 0.0}}
    assert result.average == {"nDCG@10": 0.5}


def test_run_files_round_trip(tmp_path: Path):
    rng = np.random.default_rng(1)
    run = {f"q{i}": {f"d{j}": float(rng.normal()) for j in range(12)} for i in range(5)}
    run["q0"]["d.odd#1"] = 1e-30
    path = write_trec_run(run, tmp_path / "runs" / "a.run", tag="sys")
    assert read_trec_run(path) == run
    first = path.read_text().splitlines()[0].split()
    best = max(run["q0"], key=run["q0"].get)
    assert first[:4] == ["q0", "Q0", best, "1"] and first[5] == "sys"
    with pytest.raises(ValueError, match="spaces"):
        write_trec_run({"q 1": {"d": 1.0}}, tmp_path / "bad.run")


@pytest.mark.cluster
def test_cli_sweep_prints_table_and_writes_runs(cluster_index, cluster_url, beir, model_dir,
                                                encoder, tmp_path: Path):
    engine, index = cluster_index
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, [
        "evaluate", "--url", cluster_url, "--index", index, "--dataset", str(beir),
        "--model", str(model_dir), "--metrics", "nDCG@10,R@100",
        "--query-prune", "none,topk:5", "--mode", "default,bm25", "--views", "both,pivot",
        "--run-out", str(out), "--plots", str(tmp_path / "plots"),
    ])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["system", "nDCG@10", "R@100"]
    systems = [line.split("  ")[0].strip() for line in lines[2:7]]
    assert systems == ["milco", "pivot-only", "q=topk:5", "q=topk:5 pivot-only", "bm25"]
    per_language = lines[lines.index("", 7) + 1:]  # one table per metric, systems as rows
    assert per_language[0].split() == ["nDCG@10", "de", "en", "avg"]
    assert [line.split("  ")[0].strip() for line in per_language[2:7]] == systems
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["systems"]) == set(systems)
    # The CLI's run is the API's run for the same system.
    data = load_dataset(str(beir))
    api = evaluate(Searcher(engine, index, encoder), data.queries, data.qrels)
    assert_same_run(read_trec_run(out / "milco.run"), api.run)
    assert summary["systems"]["milco"]["average"] == pytest.approx(api.average)
    shown = [100 * api.per_language[lang]["nDCG@10"] for lang in ("de", "en")]
    assert [float(x) for x in per_language[2].split()[1:]] == pytest.approx(
        [*shown, sum(shown) / 2], abs=0.051)
    bm25 = evaluate(BM25Searcher(engine, index), data.queries, data.qrels)
    assert_same_run(read_trec_run(out / "bm25.run"), bm25.run)
    for plot in ("latency_vs_query_terms.png", "metric_vs_doc_terms.png"):
        assert (tmp_path / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_builds_lowercased_per_language_indexes_on_the_local_engine(
        tmp_path: Path, model_dir: Path):
    root = tmp_path / "multi"
    for lang in ("en", "de"):
        write_beir(root / lang, seed=len(lang) + ord(lang[0]), n_docs=12)
    local = tmp_path / "local"
    result = CliRunner().invoke(main, [
        "evaluate", "--engine", "local", "--local-path", str(local), "--index", "fx-{lang}",
        "--dataset", str(root), "--model", str(model_dir), "--build", "--lowercase",
        "--run-out", str(tmp_path / "runs"), "--doc-prune", "none,topk:5",
        "--mode", "default,bm25,hybrid",
    ])
    assert result.exit_code == 0, result.output
    engine = open_engine(None, "local", local_path=str(local))
    for name in ("fx-en", "fx-de", "fx-en-topk5", "fx-de-topk5"):
        assert engine.count(name) == 12
    source = engine.get_sources("fx-de", ["doc3#0"])["doc3#0"]
    assert source["text"] == source["text"].lower() and source["lang"] == "de"
    assert max(len(v) for v in engine.get_sources("fx-en-topk5", ["doc1#0"])["doc1#0"]
               .values() if isinstance(v, dict)) <= 5
    run = read_trec_run(tmp_path / "runs" / "milco.run")
    assert {q.split("/")[0] for q in run} == {"en", "de"}  # language-prefixed query ids
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert {"bm25", "hybrid"} <= set(summary["systems"])  # BM25 without a cluster
    assert summary["systems"]["bm25"]["average"]["nDCG@10"] > 0


def test_cli_compare_puts_runs_side_by_side(beir: Path, tmp_path: Path):
    data = load_dataset(str(beir))
    perfect = {q: {d: float(r) for d, r in docs.items()} for q, docs in data.qrels.items()}
    write_trec_run(perfect, tmp_path / "perfect.run")
    write_trec_run({q: {"doc-none": 1.0} for q in data.qrels}, tmp_path / "empty.run")
    result = CliRunner().invoke(main, [
        "evaluate", "--dataset", str(beir), "--metrics", "nDCG@10",
        "--compare", str(tmp_path / "perfect.run"), "--compare", str(tmp_path / "empty.run"),
    ])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["lang", "perfect", "nDCG@10", "empty", "nDCG@10"]
    assert lines[-1].split() == ["avg", "100.0", "0.0"]


def test_dataset_readers_name_what_is_wrong(tmp_path: Path, beir: Path):
    data = load_dataset(str(beir)).lowercased()
    assert all(q.text == q.text.lower() for q in data.queries)
    assert all(d.text == d.text.lower() for d in data.corpus(None)())
    files = load_dataset(f"queries={beir / 'queries.jsonl'},qrels={beir / 'qrels/test.tsv'}")
    assert files.qrels == load_dataset(str(beir)).qrels
    bad = tmp_path / "bad.tsv"
    bad.write_text("q1 0 d1 1\nq1 d2\n")
    with pytest.raises(DatasetError, match=r"bad.tsv: line 2: expected 3 \(BEIR\) or 4"):
        load_dataset(f"queries={beir / 'queries.jsonl'},qrels={bad}")
    with pytest.raises(DatasetError, match="no queries in language"):
        load_dataset(str(beir), langs=["fr"])
    with pytest.raises(DatasetError, match="give the languages"):
        load_dataset("miracl")
    unrelated = tmp_path / "unrelated.tsv"  # judgements of other queries: every score 0
    unrelated.write_text("x1 0 d1 1\nx2 0 d2 1\n")
    with pytest.raises(DatasetError, match=r"qrels\) match none of its \d+ queries"):
        load_dataset(f"queries={beir / 'queries.jsonl'},qrels={unrelated}")
    result = CliRunner().invoke(main, ["evaluate", "--engine", "local", "--local-path",
                                       str(tmp_path / "never"), "--index", "x", "--dataset",
                                       f"queries={beir / 'queries.jsonl'},qrels={unrelated}"])
    assert result.exit_code == 2 and "match none of its" in result.output
    assert not (tmp_path / "never").exists()  # refused before any work


def test_tsv_queries_keep_quotes_and_tabs_and_refuse_lines_without_an_id(tmp_path: Path):
    queries, qrels = tmp_path / "queries.tsv", tmp_path / "qrels.tsv"
    texts = {"q1": 'He said "no" twice', "q2": '"quoted\tand tabbed', "q3": "plain"}
    queries.write_text("".join(f"{q}\t{t}\n" for q, t in texts.items()) + "\n")
    qrels.write_text("".join(f"{q} 0 d1 1\n" for q in texts))
    data = load_dataset(f"queries={queries},qrels={qrels}")
    assert {q.id: q.text for q in data.queries} == texts
    queries.write_text("q1\tfine\nno tab here\n")
    with pytest.raises(DatasetError, match=r"queries.tsv: line 2: expected qid<TAB>text"):
        load_dataset(f"queries={queries},qrels={qrels}")


def test_cli_build_splits_passages_and_scores_documents_by_their_best_passage(
        tmp_path: Path, beir: Path, model_dir: Path, encoder: SparseEncoder):
    local = tmp_path / "local"
    result = CliRunner().invoke(main, [
        "evaluate", "--engine", "local", "--local-path", str(local), "--index", "fx-passages",
        "--dataset", str(beir), "--model", str(model_dir), "--build", "--passage-window", "3",
        "--k", "5", "--run-out", str(tmp_path / "runs"),
    ])
    assert result.exit_code == 0, result.output
    engine = open_engine(None, "local", local_path=str(local))
    assert engine.count("fx-passages") > 40  # 40 documents, several passages each
    run = read_trec_run(tmp_path / "runs" / "milco.run")
    data = load_dataset(str(beir))
    every_passage = Searcher(engine, "fx-passages", encoder)
    for query in data.queries:
        best = best_per_document(every_passage.search([query.text], k=1000)[0])
        # Batched and single query encodings differ in the last float32 bits; ties may swap.
        assert sorted(run[query.id].values()) == pytest.approx(sorted(best.values())[-5:])
        assert [run[query.id][d] for d in run[query.id]] == pytest.approx(
            [best[d] for d in run[query.id]])


def test_hub_datasets_fail_with_a_clear_error_when_the_hub_is_unreachable(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (offline)")

    monkeypatch.setattr(datasets, "get_dataset_split_names", unreachable)
    with pytest.raises(DatasetError, match=r"mteb/MIRACLRetrievalHardNegatives.*'sw-queries'"
                                           r".*hub must be reachable.*BEIR folder"):
        load_dataset("miracl", langs=["sw"])


# ------------------------------------------------------------------ the Python API


def test_sweep_api_searches_each_view_as_the_exact_dot_products_of_that_view(
        tmp_path: Path, beir: Path, model_dir: Path, encoder: SparseEncoder):
    """A sweep driven from Python, no Click: it builds the index, and every system's run
    is the exact score of its views (the local engine scans every document)."""
    data = load_dataset(str(beir))
    engine = open_engine(None, "local", local_path=str(tmp_path / "local"))
    systems = sweep_systems("fx-api", views=["both", "pivot", "echo"])
    assert [s.name for s in systems] == ["milco", "pivot-only", "echo-only"]
    logged: list[str] = []
    results = Sweep(engine, data, model=str(model_dir), metrics=METRICS, k=1000,
                    build=BuildOptions(), log=logged.append).run_all(systems)
    assert engine.count("fx-api") == 40 and any("building index" in line for line in logged)
    docs = list(data.corpus(None)())
    # the index encodes each document as title + " " + text
    doc_vectors = encoder.encode([EncodeFields().text(d.title, d.text) for d in docs],
                                 kind="document")
    query_vectors = encoder.encode([q.text for q in data.queries], kind="query")
    for name, views in (("milco", ("pivot", "echo")), ("pivot-only", ("pivot",)),
                        ("echo-only", ("echo",))):
        expected = exact_run(exact_scores(query_vectors, doc_vectors, views),
                             [q.id for q in data.queries], [d.id for d in docs], k=1000)
        run = results[name].evaluation.run
        assert {q: set(d) for q, d in run.items()} == {q: set(d) for q, d in expected.items()}
        for qid, scores in expected.items():
            assert [run[qid][d] for d in scores] == pytest.approx(list(scores.values()),
                                                                  rel=1e-4)
        assert results[name].evaluation.overall == pytest.approx(direct(data.qrels, run))
    assert results["milco"].evaluation.run != results["echo-only"].evaluation.run


def test_exact_runs_score_as_ir_measures_does_per_language():
    rng = np.random.default_rng(4)
    scores = rng.random((6, 9))
    scores[0] = 0.0  # a query sharing no term with any document retrieves nothing
    qids, doc_ids = [f"q{i}" for i in range(6)], [f"d{j}" for j in range(9)]
    run = exact_run(scores, qids, doc_ids, k=5)
    assert run["q0"] == {} and all(len(run[q]) == 5 for q in qids[1:])
    assert list(run["q1"]) == [doc_ids[j] for j in np.argsort(-scores[1])[:5]]
    queries = [Query(q, "x", "en" if i < 2 else "de") for i, q in enumerate(qids)]
    qrels = {q: {doc_ids[i + 1]: 1, doc_ids[8 - i]: 2} for i, q in enumerate(qids)}
    result = evaluate(run, queries, qrels, METRICS)
    for lang in ("en", "de"):
        ids = {q.id for q in queries if q.lang == lang}
        assert result.per_language[lang] == pytest.approx(direct(
            {q: r for q, r in qrels.items() if q in ids}, {q: r for q, r in run.items()
                                                          if q in ids and r}))


def test_caching_encoder_encodes_each_distinct_text_once(encoder: SparseEncoder):
    calls: list[list[str]] = []

    class Counting:
        tokenizer = "the wrapped encoder's"

        def encode(self, texts, kind="query", **options):
            calls.append(list(texts))
            return encoder.encode(texts, kind=kind, **options)

    cached = CachingEncoder(Counting())
    first = cached.encode(["a dog", "a cat", "a dog"], kind="document")
    again = cached.encode(["a cat", "a bird"], kind="document", batch_size=7)
    as_query = cached.encode(["a dog"], kind="query")
    assert calls == [["a dog", "a cat"], ["a bird"], ["a dog"]]
    assert first[0] is first[2] and again[0] is first[1]
    assert as_query[0].to_dict() == encoder.encode(["a dog"], kind="query")[0].to_dict()
    assert cached.tokenizer == "the wrapped encoder's"


def test_compare_runs_api_and_markdown_tables(beir: Path, tmp_path: Path):
    data = load_dataset(str(beir))
    perfect = {q: {d: float(r) for d, r in docs.items()} for q, docs in data.qrels.items()}
    evaluations = compare_runs([write_trec_run(perfect, tmp_path / "perfect.run")], data,
                               ["nDCG@10"])
    assert evaluations["perfect"].average == {"nDCG@10": 1.0}
    table = markdown_table(["system", "de", "en"], [["a", 0.5, 0.25], ["b", 0.125, 1.0]],
                           bold_best=True)
    assert table.splitlines() == ["| system | de | en |", "|---|---|---|",
                                  "| a | **.500** | .250 |", "| b | .125 | **1.000** |"]


def test_bad_sweep_options_are_input_errors_and_one_line_cli_errors(beir: Path):
    with pytest.raises(InputError, match="views: 'both,pivot' is not one of"):
        sweep_systems("x", views=["both,pivot"])
    with pytest.raises(InputError, match="pruning 'topk:none'"):
        sweep_systems("x", query_prunes=["topk:none"])
    for args, message in ((["--views", "echo,nope"], "'nope' is not one of both, pivot, echo"),
                          (["--metrics", "nDCG@x"], "metric 'nDCG@x'")):
        result = CliRunner().invoke(main, ["evaluate", "--engine", "local", "--index", "x",
                                           "--dataset", str(beir), *args])
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert message in result.output and len(result.output.strip().splitlines()) <= 2
