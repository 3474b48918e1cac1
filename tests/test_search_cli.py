"""`milco-os index`, `milco-os search` and `milco-os dsl` on the local engine and a real node."""

from __future__ import annotations

import importlib
import json
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from milco_os.cli import main
from milco_os.engines import open_engine
from milco_os.engines.connection import ConnectionSettings
from milco_os.pipeline.documents import build_source
from milco_os.vectors.sparse import SparseVector, SparseView

search_cli = importlib.import_module("milco_os.cli.search")  # `milco_os.cli.search` is the command
CORPUS = {  # doc id -> passages
    "dog": ["The dog runs in the park.", "Dogs like parks."],
    "cat": ["The cat sleeps on the sofa."],
    "usa": ["The U.S. economy grew in 2019."],
    "rain": ["Heavy rain fell over Berlin."],
}
TRANSLATIONS = {"狗": "dog", "公园": "park", "美国": "u.s.", "经济": "economy", "猫": "cat"}


class WordEncoder:
    """A deterministic stand-in for a MILCO model: pivot = English words (Chinese words
    translated), echo = the words as written. Enough to exercise the search path."""

    def encode(self, texts, kind="query"):
        return [self._one(t) for t in texts]

    @staticmethod
    def _one(text: str) -> SparseVector:
        words = re.findall(r"[\w.]+", text.lower())
        pivot = [TRANSLATIONS.get(w, w).rstrip("s") if w != "u.s." else w for w in words]
        pivot += [TRANSLATIONS[w] for w in TRANSLATIONS if w in text]

        def view(terms: list[str]) -> SparseView:
            weights = [1.0 + len(t) / 10 for t in terms]  # duplicates are summed downstream
            return SparseView(np.arange(len(terms)), np.array(weights, np.float32), tuple(terms))

        return SparseVector(view(pivot), view([f"\u2581{w}" for w in words]))


@pytest.fixture(autouse=True)
def word_encoder(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loaded: list[str] = []

    def load(model: str, device: str | None, backend: str) -> WordEncoder:
        assert backend == "auto"  # the default, unless --backend says otherwise
        loaded.append(model)
        return WordEncoder()

    monkeypatch.setattr(search_cli, "load_encoder", load)
    return loaded


def fill(engine, index: str) -> None:
    docs = []
    for doc_id, passages in CORPUS.items():
        for p, text in enumerate(passages):
            vector = WordEncoder().encode([text])[0]
            docs.append((f"{doc_id}#{p}", build_source(doc_id, p, vector, title=doc_id.upper(),
                                                       text=text, lang="en")))
    assert engine.bulk_index(index, docs) == []
    engine.refresh(index)


def run(*args: str, input: str | None = None) -> str:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def local(tmp_path: Path) -> list[str]:
    options = ["--engine", "local", "--local-path", str(tmp_path)]
    run("index", "create", "news", "--model", "word-model", *options)
    fill(open_engine(None, "local", str(tmp_path)), "news")
    return options


def test_index_commands_on_the_local_engine(local: list[str]) -> None:
    info = json.loads(run("index", "info", "news", *local))
    assert info["engine"] == "local" and info["docs"] == 5
    assert info["meta"]["model"] == "word-model" and info["meta"]["views"] == ["pivot", "echo"]
    result = CliRunner().invoke(main, ["index", "delete", "news", *local], input="n\n")
    assert result.exit_code == 1  # declined
    run("index", "delete", "news", "--yes", *local)
    result = CliRunner().invoke(main, ["index", "info", "news", *local])
    assert result.exit_code == 1 and "no local index 'news'" in result.output


def test_search_json_uses_the_index_model_and_corpus_ids(local: list[str], word_encoder) -> None:
    out = run("search", "--index", "news", "--json", "--k", "3", *local, "狗 公园", "美国 经济")
    first, second = (json.loads(line) for line in out.splitlines())
    assert word_encoder == ["word-model"]  # from the index _meta
    assert first["query"] == "狗 公园" and first["hits"][0]["id"] == "dog"
    assert [h["id"] for h in first["hits"]].count("dog") == 1  # passages collapsed
    assert first["hits"][0]["title"] == "DOG"
    assert second["hits"][0]["id"] == "usa"  # "u.s." is a dotted term


def test_search_scores_are_exact_dot_products(local: list[str], tmp_path: Path) -> None:
    query = "the dog park"
    out = run("search", "--index", "news", "--json", "--no-collapse", "--alpha", "0.5", *local,
              query)
    hits = json.loads(out)["hits"]
    engine = open_engine(None, "local", str(tmp_path))
    vector = WordEncoder().encode([query])[0]
    sources = engine.get_sources("news", [f"{d}#{p}" for d, ps in CORPUS.items()
                                          for p in range(len(ps))])
    exact = {}
    for doc_key, source in sources.items():
        score = 0.0
        for view in ("pivot", "echo"):
            q: dict[str, float] = {}
            for term, w in zip(vector.view(view).terms, vector.view(view).weights, strict=True):
                q[term] = q.get(term, 0.0) + float(w)
            score += 0.5 * sum(w * source[view].get(t, 0.0) for t, w in q.items())
        exact[doc_key] = score
    ranked = sorted((s for s in exact.values() if s > 0), reverse=True)
    assert [h["score"] for h in hits] == pytest.approx(ranked, rel=1e-6)


def test_search_explain(local: list[str]) -> None:
    out = run("search", "--index", "news", "--json", "--explain", "--k", "1", *local, "狗")
    [hit] = json.loads(out)["hits"]
    assert hit["id"] == "dog"
    assert {(c["view"], c["term"]) for c in hit["explain"]} == {("pivot", "dog")}
    assert sum(c["value"] for c in hit["explain"]) == pytest.approx(hit["score"], rel=1e-6)
    text = run("search", "--index", "news", "--explain", "--k", "1", *local, "美国")
    assert "u.s." in text and "u%2Es" not in text


def test_search_reads_queries_from_stdin_and_checks_options(local: list[str]) -> None:
    out = run("search", "--index", "news", "--json", *local, input="cat\nrain\n")
    assert [json.loads(line)["hits"][0]["id"] for line in out.splitlines()] == ["cat", "rain"]
    bad = CliRunner().invoke(main, ["search", "--index", "news", "--query-prune", "half", *local,
                                    "cat"])
    assert bad.exit_code == 2 and "--query-prune" in bad.output
    hybrid = CliRunner().invoke(main, ["search", "--index", "news", "--mode", "hybrid", *local,
                                       "--json", "cat"])
    assert hybrid.exit_code == 0, hybrid.output
    assert json.loads(hybrid.stdout)["hits"][0]["id"] == "cat"  # sparse + BM25 on its text


def test_dsl_prints_a_pasteable_body() -> None:
    body = json.loads(run("dsl", "--model", "word-model", "--alpha", "0.5", "美国 dog"))
    clauses = body["query"]["bool"]["should"]
    fields = {c["rank_feature"]["field"] for c in clauses}
    assert {"pivot.u%2Es%2E", "pivot.dog", "echo.\u2581美国"} <= fields
    assert all(c["rank_feature"]["linear"] == {} for c in clauses)
    es = json.loads(run("dsl", "--model", "m", "--engine", "elasticsearch", "--mode", "two-phase",
                        "dog cat u.s."))
    assert es["query"]["bool"]["should"][0]["sparse_vector"]["prune"] is False
    two_phase = ("dsl", "--model", "word-model", "--mode", "two-phase", "--k", "7")
    tuned = json.loads(run(*two_phase, "--prune-ratio", "0.9", "--expansion-rate", "3",
                           "a dog economy"))  # weights 1.1, 1.3, 1.7 in both views
    assert len(tuned["query"]["bool"]["should"]) == 2  # economy: >= 0.9 x 1.7
    assert tuned["rescore"]["window_size"] == 21  # ceil(7 x 3)
    rate = json.loads(run(*two_phase, "--prune-ratio", "0.9", "a dog economy"))
    assert rate["rescore"]["window_size"] == 140  # the default expansion rate, 20
    default = json.loads(run(*two_phase, "a dog economy"))
    assert len(default["query"]["bool"]["should"]) == 6 and "rescore" not in default
    missing = CliRunner().invoke(main, ["dsl", "dog"])
    assert missing.exit_code == 2 and "--model" in missing.output


@pytest.mark.cluster
def test_cli_on_a_real_cluster(cluster_url: str) -> None:
    name = f"test-cli-{uuid.uuid4().hex[:10]}"
    options = ["--url", cluster_url, "--engine", "opensearch"]
    run("index", "create", name, "--model", "word-model", "--refresh-interval", "1s", *options)
    try:
        fill(open_engine(ConnectionSettings(url=cluster_url)), name)
        assert json.loads(run("index", "info", name, *options))["docs"] == 5
        for mode in ("default", "two-phase", "hybrid"):
            out = run("search", "--index", name, "--json", "--mode", mode, *options, "狗 公园")
            hits = json.loads(out)["hits"]
            assert hits[0]["id"] == "dog" and len({h["id"] for h in hits}) == len(hits)
        stemmed = run("search", "--index", name, "--json", "--mode", "hybrid", "--no-collapse",
                      "--bm25-field", "text.en", "--alpha", "0", *options, "sleeping cats")
        assert json.loads(stemmed)["hits"][0]["id"] == "cat"  # english analyzer: sleep, cat
        plain = run("search", "--index", name, "--json", "--mode", "hybrid", "--no-collapse",
                    "--bm25-field", "text", "--alpha", "0", *options, "sleeping cats")
        assert json.loads(plain)["hits"] == []  # the standard analyzer does not stem
        explained = run("search", "--index", name, "--explain", *options, "美国 经济")
        assert "u.s." in explained
        body = json.loads(run("dsl", "--index", name, *options, "狗"))
        assert body["query"]["bool"]["should"][0]["rank_feature"]["field"] == "pivot.dog"
    finally:
        run("index", "delete", name, "--yes", *options)

