"""The local on-disk engine: the Engine interface, persistence, and exact scores."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from _search_helpers import corpus, exact_matrix

from milco_os.engines import EngineError, IndexNotFoundError, open_engine
from milco_os.engines.connection import ConnectionSettings
from milco_os.engines.local import LocalEngine
from milco_os.engines.query import SparseQuery
from milco_os.pipeline.documents import build_source
from milco_os.pipeline.search import Searcher, SearchOptions
from milco_os.vectors.sparse import SparseVector, SparseView

META = {"model": "test-model", "views": ["pivot", "echo"], "pruning": "none"}


def vec(pivot: dict[str, float], echo: dict[str, float] | None = None) -> SparseVector:
    def view(d: dict[str, float]) -> SparseView:
        return SparseView.from_arrays(np.arange(len(d)), np.array(list(d.values())), d)

    return SparseVector(view(pivot), view(echo or {}))


@pytest.fixture
def engine(tmp_path: Path) -> LocalEngine:
    engine = LocalEngine(tmp_path)
    engine.create_index("idx", meta=META)
    return engine


def test_lifecycle_and_persistence(engine: LocalEngine, tmp_path: Path) -> None:
    assert engine.index_exists("idx") and not engine.index_exists("other")
    with pytest.raises(EngineError, match="already exists"):
        engine.create_index("idx", meta=META)
    engine.create_index("idx", meta=META, exist_ok=True)
    docs = [("a#0", build_source("a", 0, vec({"u.s": 1.0}), title="A", lang="en")),
            ("b#0", build_source("b", 0, vec({"x": 2.0}, {"▁x": 1.0})))]
    assert engine.bulk_index("idx", docs) == []
    reopened = LocalEngine(tmp_path)  # a new process sees what was written
    assert reopened.count("idx") == 2
    assert reopened.existing_ids("idx", ["a#0", "c#0"]) == {"a#0"}
    assert reopened.get_sources("idx", ["b#0"])["b#0"] == {
        "doc_id": "b", "passage": 0, "pivot": {"x": 2.0}, "echo": {"▁x": 1.0}}
    info = reopened.index_info("idx")
    assert info["meta"]["model"] == "test-model" and info["docs"] == 2 and info["store_bytes"] > 0
    hits = reopened.search("idx", SparseQuery(vec({"u.s": 3.0})))
    assert [(h.id, h.score, h.source["title"]) for h in hits] == [("a#0", 3.0, "A")]
    reopened.delete_index("idx")
    assert not engine.index_exists("idx")
    with pytest.raises(IndexNotFoundError):
        engine.count("idx")
    with pytest.raises(IndexNotFoundError):
        engine.delete_index("idx", missing_ok=False)


def test_same_id_replaces_the_document(engine: LocalEngine) -> None:
    engine.bulk_index("idx", [("a#0", build_source("a", 0, vec({"x": 1.0})))])
    engine.bulk_index("idx", [("a#0", build_source("a", 0, vec({"y": 1.0})))])
    assert engine.count("idx") == 1
    assert engine.search("idx", SparseQuery(vec({"x": 1.0}))) == []
    assert [h.id for h in engine.search("idx", SparseQuery(vec({"y": 1.0})))] == ["a#0"]


def test_ties_at_the_kth_score_keep_insertion_order(engine: LocalEngine) -> None:
    # the top-k cut before the sort must keep every row tied with the k-th score
    weights = [3.0, 1.0, 2.0, 1.0, 1.0, 0.5, 1.0]
    engine.bulk_index("idx", [(f"d{i}#0", build_source(f"d{i}", 0, vec({"x": w})))
                              for i, w in enumerate(weights)])
    query = SparseQuery(vec({"x": 1.0}))
    assert [h.id for h in engine.search("idx", query, k=4)] == ["d0#0", "d2#0", "d1#0", "d3#0"]
    assert [h.id for h in engine.search("idx", query, k=2)] == ["d0#0", "d2#0"]
    assert len(engine.search("idx", query, k=100)) == len(weights)


def test_rejects_what_a_cluster_rejects(engine: LocalEngine) -> None:
    failures = engine.bulk_index("idx", [
        ("dot", {"doc_id": "dot", "pivot": {"a.b": 1.0}}),
        ("zero", {"doc_id": "zero", "pivot": {"a": 0.0}}),
        ("nan", {"doc_id": "nan", "echo": {"a": float("nan")}}),
        ("field", {"doc_id": "field", "color": "red"}),
        ("ok", {"doc_id": "ok", "pivot": {"a": 1.0}}),
    ])
    assert [(f.id, f.status) for f in failures] == [
        ("dot", 400), ("zero", 400), ("nan", 400), ("field", 400)]
    assert "unknown fields ['color']" in failures[3].reason
    assert engine.count("idx") == 1


def test_invalid_index_name(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="invalid index name"):
        LocalEngine(tmp_path).create_index("../escape", meta=META)


def test_modes(engine: LocalEngine) -> None:
    engine.bulk_index("idx", [(f"d{i}#{p}", build_source(f"d{i}", p, vec({"x": 1.0 + i + p})))
                              for i in range(3) for p in range(2)])
    query = vec({"x": 1.0})
    collapsed = engine.search("idx", SparseQuery(query, collapse=True))
    assert [(h.doc_id, h.score) for h in collapsed] == [("d2", 4.0), ("d1", 3.0), ("d0", 2.0)]
    exact = engine.search("idx", SparseQuery(query), k=4)
    assert engine.search("idx", SparseQuery(query, mode="two-phase"), k=4) == exact
    with pytest.raises(EngineError, match="no 'neural-sparse' mode"):
        engine.search("idx", SparseQuery(query, mode="neural-sparse"))


TEXTS = {"a": ("Dogs", "the dog sleeps in the garden"), "b": (None, "a cat and a dog"),
         "c": ("Cats", "cats sleep all day, cats"), "d": ("Rain", "rain in Spain"),
         "e": (None, "北京是中国的首都")}


def lucene_bm25(query: list[str], docs: dict[str, list[str]]) -> dict[str, float]:
    """Lucene's BM25 (k1 1.2, b .75, no k1 + 1 factor: OpenSearch 3's default) over the
    documents that have the field, written out here independently of milco-os and bm25s."""
    have = {d: t for d, t in docs.items() if t}
    avgdl = sum(map(len, have.values())) / len(have)
    scores = {}
    for doc, terms in have.items():
        score = 0.0
        for term in query:
            df = sum(term in t for t in have.values())
            if term in terms:
                idf = math.log(1 + (len(have) - df + 0.5) / (df + 0.5))
                tf = terms.count(term)
                score += idf * tf / (tf + 1.2 * (1 - 0.75 + 0.75 * len(terms) / avgdl))
        scores[doc] = score
    return scores


def test_bm25_is_lucenes_on_the_best_field_and_hybrid_adds_it(engine: LocalEngine) -> None:
    engine.bulk_index("idx", [(f"{d}#0", build_source(d, 0, vec({"x": 1.0}), title=title,
                                                      text=text))
                              for d, (title, text) in TEXTS.items()])
    def words(text: str | None) -> list[str]:  # Chinese: a token per character, as Lucene
        return re.findall(r"[\u4e00-\u9fff]|[a-z]+", (text or "").lower())

    fields = {"title": {d: words(t) for d, (t, _) in TEXTS.items()},
              "text": {d: words(t) for d, (_, t) in TEXTS.items()}}
    for query in ("dog", "cats sleep", "the dog"):
        per_field = [lucene_bm25(query.split(), fields[f]) for f in ("title", "text")]
        want = {d: max(f.get(d, 0.0) for f in per_field) for d in TEXTS}
        hits = engine.bm25_search("idx", query, k=10)
        assert {h.doc_id: h.score for h in hits} == pytest.approx(
            {d: s for d, s in want.items() if s > 0}, rel=1e-6), query
        hybrid = engine.search("idx", SparseQuery(vec({"x": 1.0}), mode="hybrid", text=query,
                                                  bm25_boost=2.0), k=10)
        assert {h.doc_id: h.score for h in hybrid} == pytest.approx(
            {d: 1.0 + 2.0 * s for d, s in want.items()}, rel=1e-6), query
    chinese = engine.bm25_search("idx", "首都", k=3)  # one token per character, as Lucene
    assert [h.doc_id for h in chinese] == ["e"]
    assert engine.bm25_search("idx", "zebra") == []


def test_bm25_follows_replaced_documents(engine: LocalEngine) -> None:
    engine.bulk_index("idx", [("a#0", build_source("a", 0, vec({"x": 1.0}), text="old dog"))])
    assert [h.doc_id for h in engine.bm25_search("idx", "dog")] == ["a"]
    engine.bulk_index("idx", [("a#0", build_source("a", 0, vec({"x": 1.0}), text="new cat"))])
    assert engine.bm25_search("idx", "dog") == []
    assert [h.doc_id for h in engine.bm25_search("idx", "cat")] == ["a"]
    assert len(engine.sample_sources("idx", 10)) == 1


def test_open_engine_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_engine(None, "local", str(tmp_path)), LocalEngine)
    assert isinstance(open_engine(None, local_path=str(tmp_path)), LocalEngine)
    settings = ConnectionSettings(url="http://127.0.0.1:1")
    assert open_engine(settings, "elasticsearch").name == "elasticsearch"
    with pytest.raises(ValueError, match="unknown engine"):
        open_engine(settings, "solr")


def test_exact_top10_on_a_realistic_corpus(tmp_path: Path) -> None:
    docs, queries = corpus(1800, 60, seed=3)
    engine = LocalEngine(tmp_path)
    engine.create_index("big", meta=META)
    for start in range(0, len(docs), 500):
        assert engine.bulk_index("big", docs[start:start + 500]) == []
    for alpha in (None, 0.5):
        exact = exact_matrix(docs, queries, alpha=alpha)
        for q, query in enumerate(queries):
            hits = engine.search("big", SparseQuery(query, alpha=alpha), k=10)
            order = np.argsort(-exact[q], kind="stable")[:10]
            assert [h.id for h in hits] == [docs[i][0] for i in order]
            np.testing.assert_allclose([h.score for h in hits], exact[q, order], rtol=1e-6)

    class Fixed:
        def encode(self, texts, kind="query"):
            return [queries[int(t)] for t in texts]

    searcher = Searcher(engine, "big", Fixed(), SearchOptions(alpha=0.5))
    for hit in searcher.search(["4"], k=5)[0]:
        assert searcher.explain(hit, queries[4]).exact_score == pytest.approx(hit.score, rel=1e-6)


def test_two_writers_share_one_index(engine: LocalEngine, tmp_path: Path) -> None:
    other = LocalEngine(tmp_path)
    engine.bulk_index("idx", [("a#0", build_source("a", 0, vec({"x": 1.0})))])
    other.bulk_index("idx", [("b#0", build_source("b", 0, vec({"x": 2.0})))])
    engine.bulk_index("idx", [("b#0", build_source("b", 0, vec({"x": 3.0})))])
    for reader in (engine, other, LocalEngine(tmp_path)):
        hits = reader.search("idx", SparseQuery(vec({"x": 1.0})))
        assert [(h.id, h.score) for h in hits] == [("b#0", 3.0), ("a#0", 1.0)]


@pytest.mark.parametrize("crash_in", ["segment", "manifest"])
def test_a_crash_mid_write_never_leaves_a_half_index(tmp_path, monkeypatch, crash_in) -> None:
    import milco_os.engines.local as local_module

    engine = LocalEngine(tmp_path)
    engine.create_index("crash", meta={"model": "m", "views": ["pivot"], "pruning": "none"})
    first = [("a#0", {"doc_id": "a", "passage": 0, "pivot": {"x": 1.0}})]
    assert engine.bulk_index("crash", first) == []

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    target = (local_module.np, "savez") if crash_in == "segment" else (local_module.os, "replace")
    monkeypatch.setattr(*target, crash)
    with pytest.raises(EngineError, match="local index 'crash': cannot write .*simulated crash"):
        engine.bulk_index("crash", [("b#0", {"doc_id": "b", "passage": 0, "pivot": {"x": 2.0}})])
    monkeypatch.undo()
    if crash_in == "segment":  # what was written of the segment is gone
        assert len(list((tmp_path / "crash").glob("seg-*"))) == 2
    reopened = LocalEngine(tmp_path)  # a fresh process's view of the files
    assert reopened.count("crash") == 1
    assert reopened.existing_ids("crash", ["a#0", "b#0"]) == {"a#0"}
    assert reopened.bulk_index("crash", [("c#0", {"doc_id": "c", "passage": 0,
                                                  "pivot": {"x": 3.0}})]) == []
    assert reopened.count("crash") == 2
