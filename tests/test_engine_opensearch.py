"""OpenSearch-only traps of docs/search-engines.md, on OpenSearch 2.19.6 and 3.3.2 (the
engine contract both share with Elasticsearch is in test_engine_contract.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from milco_os.engines import EngineError, TransientEngineError, open_engine
from milco_os.engines.connection import ConnectionSettings
from milco_os.engines.opensearch import OpenSearchEngine
from milco_os.engines.query import SparseQuery
from milco_os.pipeline.documents import build_source
from milco_os.vectors.sparse import SparseVector, SparseView

pytestmark = pytest.mark.cluster

SERVERS = ["opensearch-2.19.6", "opensearch-3.3.2"]
META = {"model": "test-model", "views": ["pivot", "echo"], "pruning": "none"}
PRECISION = 0.005  # engine scores within 0.5% of exact (9-bit document weights)


def vec(pivot: dict[str, float], echo: dict[str, float] | None = None) -> SparseVector:
    def view(d: dict[str, float]) -> SparseView:
        return SparseView.from_arrays(np.arange(len(d)), np.array(list(d.values())), d)

    return SparseVector(view(pivot), view(echo or {}))


@pytest.fixture(scope="module")
def engine(server) -> OpenSearchEngine:
    return OpenSearchEngine(ConnectionSettings(url=server.url))


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


def test_open_engine_picks_the_cluster(server) -> None:
    assert open_engine(ConnectionSettings(url=server.url)).name == "opensearch"


def test_the_node_has_the_modules_milco_needs(engine: OpenSearchEngine, server) -> None:
    nodes = engine.request("GET", "/_nodes/plugins")["nodes"].values()
    assert all(n["version"] == server.version for n in nodes)
    modules = {m["name"] for n in nodes for m in n["modules"]}
    assert {"mapper-extras", "analysis-common"} <= modules and engine.has_language_analyzers


def test_dotted_names_match_only_when_escaped(engine: OpenSearchEngine, index: str) -> None:
    put(engine, index, [("raw", {"doc_id": "raw", "pivot": {"u.s": 2.0}}),
                        ("safe", build_source("safe", 0, vec({"u.s": 2.0})))])
    raw_query = {"query": {"rank_feature": {"field": "pivot.u.s", "linear": {}}}}
    assert engine.raw_search(index, raw_query) == []  # indexed, yet silently unmatched
    hits = engine.search(index, SparseQuery(vec({"u.s": 1.5})))
    assert ids(hits) == ["safe"]
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
