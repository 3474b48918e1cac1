"""Query bodies (milco_os.engines.query) and index mappings (milco_os.engines.mappings)."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest

import milco_os.engines
import milco_os.engines.local
import milco_os.engines.mappings
import milco_os.engines.query
import milco_os.pipeline.search
from milco_os.engines.mappings import TEXT_ANALYZERS, index_body, mapping_template
from milco_os.engines.query import (
    COMPLETE_SCORING_ABOVE,
    NEURAL_SPARSE_MAX_WEIGHT,
    EmptyQueryWarning,
    QueryPrunedWarning,
    SparseQuery,
    build_search_body,
    sent_terms,
)
from milco_os.vectors.sparse import SparseVector, SparseView

REPO = Path(__file__).resolve().parents[1]


def vec(pivot: dict[str, float], echo: dict[str, float] | None = None) -> SparseVector:
    def view(d: dict[str, float]) -> SparseView:
        return SparseView.from_arrays(np.arange(len(d)), np.array(list(d.values())), d)

    return SparseVector(view(pivot), view(echo or {}))


def boosts(body: dict) -> dict[str, float]:
    return {c["rank_feature"]["field"]: c["rank_feature"]["boost"]
            for c in body["query"]["bool"]["should"] if "rank_feature" in c}


@pytest.mark.parametrize("module", [milco_os.engines.query, milco_os.engines.mappings,
                                    milco_os.pipeline.search, milco_os.engines,
                                    milco_os.engines.local])
def test_doctests(module) -> None:
    assert doctest.testmod(module).failed == 0


def test_default_body_is_the_released_dot_product() -> None:
    body = build_search_body(SparseQuery(vec({"u.s": 2.0, "dog": 0.5}, {"▁狗": 1.5})), k=7)
    assert body["size"] == 7 and body["track_total_hits"] is False
    assert body["_source"] == {"excludes": ["pivot", "echo"]}
    clauses = body["query"]["bool"]["should"]
    assert all(c["rank_feature"]["linear"] == {} for c in clauses)
    assert boosts(body) == {"pivot.u%2Es": 2.0, "pivot.dog": 0.5, "echo.▁狗": 1.5}


def test_alpha_weights_the_views() -> None:
    query = vec({"a": 2.0}, {"b": 4.0})
    assert boosts(build_search_body(SparseQuery(query, alpha=0.5))) == {
        "pivot.a": 1.0, "echo.b": 2.0}
    assert boosts(build_search_body(SparseQuery(query, alpha=0.25))) == {
        "pivot.a": 0.5, "echo.b": 3.0}
    assert boosts(build_search_body(SparseQuery(query, alpha=1.0))) == {"pivot.a": 2.0}
    with pytest.raises(ValueError, match="alpha"):
        SparseQuery(query, alpha=1.5)


def test_clause_limit_keeps_the_highest_weights() -> None:
    terms = {f"t{i}": float(i + 1) for i in range(1500)}
    query = SparseQuery(vec(terms, {"e": 1400.5}))
    with pytest.warns(QueryPrunedWarning, match="1501 terms.*max_clause_count"):
        body = build_search_body(query, max_clause_count=1024)
    kept = boosts(body)
    # the echo term and the 1023 highest pivot terms
    assert len(kept) == 1024 and "echo.e" in kept and min(kept.values()) == 478.0
    assert sent_terms(query, 1024) == {
        "pivot": {k[6:]: v for k, v in kept.items() if k.startswith("pivot.")},
        "echo": {"e": 1400.5}}
    assert len(boosts(build_search_body(query, max_clause_count=None))) == 1501
    small = SparseQuery(vec(terms), max_clauses=10)
    with pytest.warns(QueryPrunedWarning):
        assert len(boosts(build_search_body(small, max_clause_count=1024))) == 10


def test_hybrid_reserves_clauses_for_bm25() -> None:
    terms = {f"t{i}": float(i + 1) for i in range(2000)}
    query = SparseQuery(vec(terms), mode="hybrid", text="dog park", bm25_boost=0.3)
    with pytest.warns(QueryPrunedWarning):
        body = build_search_body(query, max_clause_count=1024)
    should = body["query"]["bool"]["should"]
    assert should[-1] == {"multi_match": {"query": "dog park", "fields": ["title", "text"],
                                          "boost": 0.3}}
    assert len(should) - 1 == 1024 - len("dogpark") * 2
    with pytest.raises(ValueError, match="hybrid"):
        SparseQuery(vec(terms), mode="hybrid")


def test_two_phase_splits_by_weight_and_rescores() -> None:
    query = SparseQuery(vec({"a": 10.0, "b": 4.0, "c": 3.875}, {"d": 0.125}), mode="two-phase",
                        prune_ratio=0.4, expansion_rate=5.0)
    body = build_search_body(query, k=7)
    assert boosts(body) == {"pivot.a": 10.0, "pivot.b": 4.0}
    rescore = body["rescore"]
    assert rescore["window_size"] == 35
    assert rescore["query"]["score_mode"] == "total"
    phase2 = boosts({"query": rescore["query"]["rescore_query"]})
    assert phase2 == {"pivot.c": 3.875, "echo.d": 0.125}
    only_high = build_search_body(SparseQuery(vec({"a": 1.0}), mode="two-phase"))
    assert "rescore" not in only_high
    with pytest.raises(ValueError, match="collapse"):
        SparseQuery(vec({"a": 1.0}), mode="two-phase", collapse=True)


def test_long_queries_score_every_matching_document() -> None:
    def body(n: int, **options) -> dict:
        terms = {f"t{i}": float(n - i) for i in range(n)}
        return build_search_body(SparseQuery(vec(terms), **options), k=10)

    assert body(COMPLETE_SCORING_ABOVE)["track_total_hits"] is False
    assert body(COMPLETE_SCORING_ABOVE + 1)["track_total_hits"] is True
    # counted as sent: after the clause limit, and in two-phase on phase 1 only
    assert body(COMPLETE_SCORING_ABOVE + 1, max_clauses=COMPLETE_SCORING_ABOVE
                )["track_total_hits"] is False
    assert body(2 * COMPLETE_SCORING_ABOVE, mode="two-phase", prune_ratio=0.6
                )["track_total_hits"] is False
    assert body(2 * COMPLETE_SCORING_ABOVE, mode="two-phase", prune_ratio=0.01
                )["track_total_hits"] is True


def test_collapse() -> None:
    body = build_search_body(SparseQuery(vec({"a": 1.0}), collapse=True))
    assert body["collapse"] == {"field": "doc_id"}


def test_neural_sparse_weights_stay_in_range_with_the_same_scores() -> None:
    query = SparseQuery(vec({"a.b": 128.0, "c": 2.0}, {"e": 3.0}), mode="neural-sparse")
    pivot, echo = build_search_body(query)["query"]["bool"]["should"]
    tokens = pivot["neural_sparse"]["pivot"]["query_tokens"]
    boost = pivot["neural_sparse"]["pivot"]["boost"]
    assert max(tokens.values()) <= NEURAL_SPARSE_MAX_WEIGHT and min(tokens.values()) > 0
    assert {t: w * boost for t, w in tokens.items()} == {"a%2Eb": 128.0, "c": 2.0}
    assert echo == {"neural_sparse": {"echo": {"query_tokens": {"e": 3.0}, "boost": 1.0}}}
    with pytest.raises(ValueError, match="OpenSearch"):
        build_search_body(query, flavour="elasticsearch")


def test_elasticsearch_flavour_uses_sparse_vector_without_pruning() -> None:
    query = SparseQuery(vec({"u.s": 2.0}, {"▁x": 1.0}), alpha=0.5)
    body = build_search_body(query, flavour="elasticsearch", max_clause_count=None)
    assert body["query"]["bool"]["should"] == [
        {"sparse_vector": {"field": "pivot", "query_vector": {"u%2Es": 1.0}, "prune": False}},
        {"sparse_vector": {"field": "echo", "query_vector": {"▁x": 0.5}, "prune": False}},
    ]


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="mode"):
        SparseQuery(vec({"a": 1.0}), mode="fast")
    with pytest.raises(ValueError, match="k must be"):
        build_search_body(SparseQuery(vec({"a": 1.0})), k=0)


@pytest.mark.parametrize("engine", ["opensearch", "elasticsearch"])
def test_mapping_files_match_the_package(engine: str) -> None:
    on_disk = json.loads((REPO / "mappings" / f"{engine}.json").read_text(encoding="utf-8"))
    assert on_disk == mapping_template(engine)


def test_index_body() -> None:
    body = index_body("opensearch", meta={"model": "m", "views": ["pivot"], "pruning": "mass:0.5"},
                      shards=2, replicas=1, refresh_interval="30s")
    assert body["settings"] == {"index": {"number_of_shards": 2, "number_of_replicas": 1,
                                          "refresh_interval": "30s"}}
    props = body["mappings"]["properties"]
    assert props["echo"] == {"type": "rank_features"}
    assert props["text"]["fields"]["cjk"] == {"type": "text", "analyzer": "cjk"}
    assert set(props["text"]["fields"]) == set(TEXT_ANALYZERS)
    assert body["mappings"]["_meta"]["milco_os_version"] == milco_os.__version__
    es = index_body("elasticsearch", meta={"model": "m", "views": ["pivot"], "pruning": "none"})
    assert es["mappings"]["properties"]["pivot"] == {"type": "sparse_vector",
                                                      "index_options": {"prune": False}}
    with pytest.raises(ValueError, match="pruning"):
        index_body("opensearch", meta={"model": "m", "views": ["pivot"]})
    with pytest.raises(ValueError, match="unknown views"):
        index_body("opensearch", meta={"model": "m", "views": ["dense"], "pruning": "none"})


@pytest.mark.parametrize("mode", ["default", "two-phase"])
def test_a_query_without_terms_matches_nothing_and_says_so(mode: str) -> None:
    """An empty ``bool.should`` would match every document with score 1.0."""
    with pytest.warns(EmptyQueryWarning, match="no term left"):
        body = build_search_body(SparseQuery(vec({}), mode=mode))
    assert body["query"] == {"match_none": {}} and "rescore" not in body
