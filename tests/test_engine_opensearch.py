"""The OpenSearch engine against a real node: every trap of docs/search-engines.md,
and engine scores equal to exact dot products up to Lucene's 9-bit storage."""

from __future__ import annotations

import json
import math
import uuid
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from _search_helpers import corpus, exact_matrix

from milco_os.connection import ConnectionSettings
from milco_os.documents import build_source
from milco_os.engines import (
    BulkFailure,
    EngineError,
    IndexNotFoundError,
    TransientEngineError,
    open_engine,
)
from milco_os.engines.opensearch import OpenSearchEngine
from milco_os.query import QueryPrunedWarning, SparseQuery, build_search_body
from milco_os.search import Searcher, SearchOptions
from milco_os.sparse import SparseVector, SparseView
from milco_os.terms import FeatureValueError, encode_term

pytestmark = pytest.mark.cluster

META = {"model": "test-model", "views": ["pivot", "echo"], "pruning": "none"}
PRECISION = 0.005  # engine scores within 0.5% of exact (9-bit document weights)


def vec(pivot: dict[str, float], echo: dict[str, float] | None = None) -> SparseVector:
    def view(d: dict[str, float]) -> SparseView:
        return SparseView.from_arrays(np.arange(len(d)), np.array(list(d.values())), d)

    return SparseVector(view(pivot), view(echo or {}))


@pytest.fixture(scope="module")
def engine(cluster_url: str) -> OpenSearchEngine:
    return OpenSearchEngine(ConnectionSettings(url=cluster_url))


@pytest.fixture
def index(engine: OpenSearchEngine) -> Iterator[str]:
    name = f"test-search-{uuid.uuid4().hex[:10]}"
    engine.create_index(name, meta=META)
    yield name
    engine.delete_index(name)


def put(engine: OpenSearchEngine, index: str, docs: list[tuple[str, dict]]) -> None:
    assert engine.bulk_index(index, docs) == []
    engine.refresh(index)


def ids(hits) -> list[str]:
    return [h.id for h in hits]


def test_index_lifecycle(engine: OpenSearchEngine) -> None:
    name = f"test-search-{uuid.uuid4().hex[:10]}"
    assert not engine.index_exists(name)
    engine.create_index(name, meta=META, refresh_interval="5s")
    engine.create_index(name, meta=META, exist_ok=True)
    with pytest.raises(EngineError, match="already_exists"):
        engine.create_index(name, meta=META)
    info = engine.index_info(name)
    assert info["meta"]["model"] == "test-model" and info["meta"]["milco_os_version"]
    assert info["settings"] == {"shards": 1, "replicas": 0, "refresh_interval": "5s"}
    put(engine, name, [("a#0", build_source("a", 0, vec({"x": 1.0})))])
    assert engine.count(name) == 1 and engine.index_info(name)["docs"] == 1
    assert engine.existing_ids(name, ["a#0", "b#0"]) == {"a#0"}
    assert engine.get_sources(name, ["a#0"])["a#0"]["pivot"] == {"x": 1.0}
    engine.delete_index(name)
    engine.delete_index(name)  # missing_ok
    with pytest.raises(IndexNotFoundError):
        engine.delete_index(name, missing_ok=False)
    with pytest.raises(IndexNotFoundError):
        engine.count(name)


def test_open_engine_picks_the_cluster(cluster_url: str) -> None:
    assert open_engine(ConnectionSettings(url=cluster_url)).name == "opensearch"


def test_dotted_names_match_only_when_escaped(engine: OpenSearchEngine, index: str) -> None:
    put(engine, index, [("raw", {"doc_id": "raw", "pivot": {"u.s": 2.0}}),
                        ("safe", build_source("safe", 0, vec({"u.s": 2.0})))])
    raw_query = {"query": {"rank_feature": {"field": "pivot.u.s", "linear": {}}}}
    assert engine.raw_search(index, raw_query) == []  # indexed, yet silently unmatched
    hits = engine.search(index, SparseQuery(vec({"u.s": 1.5})))
    assert ids(hits) == ["safe"]
    assert hits[0].score == pytest.approx(3.0, rel=PRECISION)


def test_bad_weights(engine: OpenSearchEngine, index: str) -> None:
    failures = engine.bulk_index(index, [
        ("zero", {"doc_id": "zero", "pivot": {"a": 0.0}}),
        ("negative", {"doc_id": "negative", "pivot": {"a": -1.0, "b": 1.0}}),
        ("tiny", {"doc_id": "tiny", "pivot": {"a": 1e-39}}),
    ])
    assert {(f.id, f.status) for f in failures} == {("zero", 400), ("negative", 400), ("tiny", 400)}
    assert all("positive normal float" in f.reason for f in failures)
    view = SparseView(np.arange(4), np.array([0.0, -1.0, 1e-39, 2.0], np.float32),
                      ("zero", "neg", "tiny", "ok"))
    put(engine, index, [("fixed", build_source("fixed", 0, SparseVector(view)))])
    assert engine.get_sources(index, ["fixed"])["fixed"]["pivot"] == {
        "ok": 2.0, "tiny": 1.17549435e-38}
    nan = SparseView(np.arange(1), np.array([np.nan], np.float32), ("bad",))
    with pytest.raises(FeatureValueError, match="document 'x' pivot: term 'bad'"):
        build_source("x", 0, SparseVector(nan))


def test_duplicate_features_rejected_by_engine_and_summed_by_us(
    engine: OpenSearchEngine, index: str
) -> None:
    action = json.dumps({"index": {"_index": index, "_id": "dup"}})
    answer = engine.request("POST", "/_bulk", f'{action}\n{{"pivot": {{"a": 1.0, "a": 2.0}}}}\n',
                            ndjson=True)
    assert answer["errors"] and answer["items"][0]["index"]["status"] == 400
    view = SparseView(np.arange(3), np.array([1.0, 2.0, 0.5], np.float32), ("a", "a", "b"))
    put(engine, index, [("merged", build_source("merged", 0, SparseVector(view)))])
    hits = engine.search(index, SparseQuery(vec({"a": 1.0})))
    assert hits[0].score == pytest.approx(3.0, rel=PRECISION)


def test_saturation_default_is_not_a_dot_product(engine: OpenSearchEngine, index: str) -> None:
    put(engine, index, [("d", build_source("d", 0, vec({"a": 4.0, "b": 0.5})))])
    query = vec({"a": 2.0, "b": 1.0})
    exact = 2.0 * 4.0 + 1.0 * 0.5
    saturation = {"query": {"bool": {"should": [
        {"rank_feature": {"field": "pivot.a", "boost": 2.0}},
        {"rank_feature": {"field": "pivot.b", "boost": 1.0}}]}}}
    assert engine.raw_search(index, saturation)[0].score < 0.5 * exact
    assert engine.search(index, SparseQuery(query))[0].score == pytest.approx(exact, rel=PRECISION)


def test_clause_limit(engine: OpenSearchEngine, index: str) -> None:
    terms = {f"t{i}": 1.0 + i / 1500 for i in range(1500)}
    put(engine, index, [("d", build_source("d", 0, vec(terms)))])
    query = SparseQuery(vec(terms))
    assert engine.max_clause_count == 1024
    with pytest.raises(EngineError, match="maxClauseCount"):
        engine.raw_search(index, build_search_body(query, max_clause_count=None))
    with pytest.warns(QueryPrunedWarning, match="indices.query.bool.max_clause_count"):
        hits = engine.search(index, query)
    kept = sorted(terms.values())[-1024:]  # the highest-weighted terms
    assert hits[0].score == pytest.approx(sum(w * w for w in kept), rel=PRECISION)


def test_nine_bit_precision(engine: OpenSearchEngine, index: str) -> None:
    weight = 1.0 + 511 / 512  # needs 10 significant bits: Lucene keeps 9
    put(engine, index, [("d", build_source("d", 0, vec({"a": weight})))])
    score = engine.search(index, SparseQuery(vec({"a": 1.0})))[0].score
    assert score != weight and score == pytest.approx(weight, rel=PRECISION)


def test_alpha_scales_views(engine: OpenSearchEngine, index: str) -> None:
    put(engine, index, [("d", build_source("d", 0, vec({"a": 2.0}, {"\u2581a": 4.0})))])
    query = vec({"a": 1.0}, {"\u2581a": 1.0})
    released = engine.search(index, SparseQuery(query))[0].score
    assert released == pytest.approx(6.0, rel=PRECISION)
    half = engine.search(index, SparseQuery(query, alpha=0.5))[0].score
    assert half == pytest.approx(released / 2, rel=1e-6)
    assert engine.search(index, SparseQuery(query, alpha=1.0))[0].score == pytest.approx(2.0)


def test_neural_sparse_needs_the_plugin(engine: OpenSearchEngine, index: str) -> None:
    if engine.supports_neural_sparse:
        pytest.skip("this cluster has the neural-search plugin")
    with pytest.raises(EngineError, match="neural-search"):
        engine.search(index, SparseQuery(vec({"a": 1.0}), mode="neural-sparse"))


@pytest.fixture(scope="module")
def big_index(engine: OpenSearchEngine) -> Iterator[tuple[str, list, list]]:
    docs, queries = corpus(1800, 60, seed=7)
    name = f"test-search-big-{uuid.uuid4().hex[:10]}"
    engine.create_index(name, meta=META, refresh_interval="-1")
    for start in range(0, len(docs), 600):
        assert engine.bulk_index(name, docs[start:start + 600]) == []
    engine.refresh(name)
    yield name, docs, queries
    engine.delete_index(name)


def test_engine_top10_equals_exact_dot_products(engine: OpenSearchEngine, big_index) -> None:
    name, docs, queries = big_index
    exact = exact_matrix(docs, queries)
    row = {doc_id: i for i, (doc_id, _) in enumerate(docs)}
    same = total = 0
    for q, query in enumerate(queries):
        hits = engine.search(name, SparseQuery(query), k=10)
        expected = [docs[i][0] for i in np.argsort(-exact[q], kind="stable")[:10]]
        same += sum(a == b for a, b in zip(ids(hits), expected, strict=True))
        total += 10
        for hit in hits:
            assert hit.score == pytest.approx(exact[q, row[hit.id]], rel=PRECISION)
            assert hit.source["doc_id"] == hit.id.split("#")[0] and "pivot" not in hit.source
    assert same / total >= 0.98, f"{total - same} of {total} top-10 positions differ"


def test_two_phase_and_hybrid(engine: OpenSearchEngine, big_index) -> None:
    name, docs, queries = big_index
    exact = exact_matrix(docs, queries[:10])
    row = {doc_id: i for i, (doc_id, _) in enumerate(docs)}
    for q, query in enumerate(queries[:10]):
        default = engine.search(name, SparseQuery(query), k=10)
        two_phase = engine.search(name, SparseQuery(query, mode="two-phase"), k=10)
        assert len(two_phase) == 10
        for hit in two_phase:  # rescored: exact scores for the window
            assert hit.score == pytest.approx(exact[q, row[hit.id]], rel=PRECISION)
        assert len(set(ids(default)) & set(ids(two_phase))) >= 8
    hybrid = SparseQuery(queries[0], mode="hybrid", text="title 17", bm25_boost=100.0)
    hits = engine.search(name, hybrid, k=10)
    assert len(hits) == 10 and hits[0].id == "d8#1"  # BM25 finds "title 17" (doc 17)
    sparse_only = exact[0, row["d8#1"]]
    assert hits[0].score > sparse_only + 100.0  # its BM25 score is added, boosted


def test_collapse_by_document(engine: OpenSearchEngine, big_index) -> None:
    name, docs, queries = big_index
    exact = exact_matrix(docs, queries[:5])
    for q, query in enumerate(queries[:5]):
        hits = engine.search(name, SparseQuery(query, collapse=True), k=10)
        doc_ids = [h.doc_id for h in hits]
        assert len(doc_ids) == 10 and len(set(doc_ids)) == 10
        best: dict[str, float] = {}
        for i, (_, source) in enumerate(docs):
            best[source["doc_id"]] = max(best.get(source["doc_id"], 0.0), exact[q, i])
        for hit in hits:
            assert hit.score == pytest.approx(best[hit.doc_id], rel=PRECISION)


def test_explain_sums_to_the_score(engine: OpenSearchEngine, big_index) -> None:
    name, _, queries = big_index

    class Fixed:
        def encode(self, texts, kind="query"):
            return [queries[int(t)] for t in texts]

    searcher = Searcher(engine, name, Fixed(), SearchOptions(alpha=0.5))
    for text, hits in zip(["0", "1", "2"], searcher.search(["0", "1", "2"], k=3), strict=True):
        for hit in hits:
            explanation = searcher.explain(hit, queries[int(text)])
            assert explanation.agrees()
            assert math.isclose(explanation.exact_score, hit.score, rel_tol=PRECISION)


def test_explain_cross_lingual_match(engine: OpenSearchEngine, index: str) -> None:
    english = vec({"dog": 2.0, "park": 1.0, ".": 0.5}, {"\u2581dog": 1.0})
    put(engine, index, [("en#0", build_source("en", 0, english, text="The dog ran.", lang="en"))])
    chinese = vec({"dog": 1.5, "animal": 0.7, ".": 0.1}, {"\u2581狗": 2.0})

    class Fixed:
        def encode(self, texts, kind="query"):
            return [chinese for _ in texts]

    searcher = Searcher(engine, index, Fixed())
    [[hit]] = searcher.search(["狗在公园里跑。"])
    explanation = searcher.explain(hit, chinese)
    assert [(c.view, c.term) for c in explanation.contributions] == [("pivot", "dog"),
                                                                     ("pivot", ".")]
    assert explanation.agrees() and "dog" in explanation.format()
    assert encode_term(".") not in explanation.format()


def test_bulk_reports_each_failure(engine: OpenSearchEngine, index: str) -> None:
    good = build_source("g", 0, vec({"a": 1.0}))
    failures = engine.bulk_index(index, [("g#0", good), ("b#0", {"doc_id": "b", "oops": 1})])
    assert failures == [BulkFailure("b#0", 400, failures[0].reason)]
    assert "strict_dynamic_mapping_exception" in failures[0].reason
    nan = {"doc_id": "n", "pivot": {"a": float("nan")}}
    failures = engine.bulk_index(index, [("n#0", nan), ("h#0", good)])
    assert [(f.id, f.status) for f in failures] == [("n#0", 400)] and "NaN" in failures[0].reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.refresh(index)
    assert engine.count(index) == 2


def test_unreachable_cluster_is_transient() -> None:
    engine = OpenSearchEngine(ConnectionSettings(url="http://127.0.0.1:1", timeout=2))
    with pytest.raises(TransientEngineError):
        engine.count("anything")


class ScriptedSettings(OpenSearchEngine):
    """An engine whose cluster-settings answer is scripted."""

    def __init__(self, answer: dict | Exception) -> None:
        super().__init__(ConnectionSettings(url="http://127.0.0.1:1"))
        self.answer = answer

    def request(self, method, path, body=None, params=None, ndjson=False):
        assert path == "/_cluster/settings"
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_clause_limit_is_read_from_the_cluster() -> None:
    key = "indices.query.bool.max_clause_count"
    raised = {"persistent": {key: "4096"}, "defaults": {key: "1024"}}
    assert ScriptedSettings(raised).max_clause_count == 4096
    assert ScriptedSettings({"defaults": {}}).max_clause_count == 1024
    forbidden = EngineError("GET /_cluster/settings: HTTP 403: security_exception")
    assert ScriptedSettings(forbidden).max_clause_count == 1024
    with pytest.raises(TransientEngineError):
        _ = ScriptedSettings(TransientEngineError("HTTP 503")).max_clause_count
