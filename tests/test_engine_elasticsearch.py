"""The Elasticsearch engine: the requests it sends (the real ``elasticsearch`` client
talking to a scripted node, which can answer as any version), and what only
Elasticsearch does, on real nodes: 9.2.4 and the lowest and highest 8.x supported
(the contract shared with OpenSearch is in test_engine_contract.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders
from elastic_transport._node._base import NodeApiResponse
from elasticsearch import Elasticsearch

from milco_os.engines import BulkFailure, EngineError, IndexNotFoundError, TransientEngineError
from milco_os.engines.connection import ConnectionSettings
from milco_os.engines.elasticsearch import ElasticsearchEngine
from milco_os.engines.query import SparseQuery
from milco_os.pipeline.documents import build_source
from milco_os.vectors.sparse import SparseVector, SparseView

Reply = tuple[int, Any]
META = {"model": "m", "views": ["pivot", "echo"], "pruning": "none"}


class ScriptedNode(BaseNode):
    """Answers each request with ``handler(method, target, body)``; records requests."""

    handler: Callable[[str, str, Any], Reply]
    requests: list[tuple[str, str, dict[str, str], bytes | None]]

    def perform_request(self, method, target, body=None, headers=None, request_timeout=None):
        self.requests.append((method, target, dict(headers or {}), body))
        status, answer = self.handler(method, target, body)
        meta = ApiResponseMeta(
            status=status, http_version="1.1", duration=0.0, node=self.config,
            headers=HttpHeaders({"x-elastic-product": "Elasticsearch",
                                 "content-type": "application/vnd.elasticsearch+json;"
                                                 "compatible-with=9"}),
        )
        return NodeApiResponse(meta, json.dumps(answer).encode())


def engine_with(handler: Callable[[str, str, Any], Reply], version: str = "9.2.4"
                ) -> tuple[ElasticsearchEngine, list]:
    """An engine whose node answers ``GET /`` as ``version`` and the rest with ``handler``."""
    requests: list = []

    def answer(method: str, target: str, body: Any) -> Reply:
        probes = {"/": {"version": {"number": version}},  # not what the tests look at
                  "/_nodes/plugins": {"nodes": {"n": {"modules": [{"name": "analysis-common"}]}}}}
        if method == "GET" and target in probes:
            requests.pop()
            return 200, probes[target]
        return handler(method, target, body)

    node_class = type("Node", (ScriptedNode,), {"handler": staticmethod(answer),
                                                 "requests": requests})
    client = Elasticsearch("http://es.test:9200", node_class=node_class, max_retries=0)
    settings = ConnectionSettings(url="http://es.test:9200", engine="elasticsearch")
    return ElasticsearchEngine(settings, client=client), requests


def vec(pivot: dict[str, float], echo: dict[str, float] | None = None) -> SparseVector:
    def view(d: dict[str, float]) -> SparseView:
        return SparseView.from_arrays(np.arange(len(d)), np.array(list(d.values())), d)

    return SparseVector(view(pivot), view(echo or {}))


def test_create_index_sends_the_sparse_vector_mapping() -> None:
    engine, requests = engine_with(lambda m, t, b: (200, {"acknowledged": True}))
    engine.create_index("news", meta=META, shards=2)
    (method, target, headers, body), wait = requests[-2:]
    assert (method, target) == ("PUT", "/news")
    # then it waits for the master to report the new index yellow
    assert wait[:2] == ("GET", "/_cluster/health/news?wait_for_status=yellow&timeout=60s")
    assert headers["content-type"] == "application/json"  # 8.x refuses 9.x compatibility
    sent = json.loads(body)
    assert sent["mappings"]["properties"]["pivot"] == {"type": "sparse_vector",
                                                        "index_options": {"prune": False}}
    assert sent["mappings"]["_meta"]["model"] == "m"
    assert sent["settings"]["index"]["number_of_shards"] == 2


@pytest.mark.parametrize(("version", "index_options"), [
    ("8.11.3", None), ("8.18.0", None), ("8.19.21", {"prune": False}), ("9.0.8", None),
    ("9.1.0", {"prune": False}), ("9.2.4", {"prune": False})])
def test_prune_false_is_sent_where_index_time_pruning_exists(version, index_options) -> None:
    engine, requests = engine_with(lambda m, t, b: (200, {"acknowledged": True}), version)
    engine.create_index("news", meta=META)
    sent = json.loads(requests[-2][3])["mappings"]["properties"]["pivot"]
    assert sent == {"type": "sparse_vector", **({"index_options": index_options}
                                                 if index_options else {})}


def test_8x_searches_with_boosted_term_clauses_and_9x_asks_for_vectors() -> None:
    answer = {"hits": {"hits": []}, "docs": []}
    engine, requests = engine_with(lambda m, t, b: (200, answer), "8.19.21")
    engine.search("news", SparseQuery(vec({"u.s": 2.0})))
    assert json.loads(requests[-1][3])["query"]["bool"]["should"] == [
        {"term": {"pivot": {"value": "u%2Es", "boost": 2.0}}}]
    assert engine.max_clause_count == 1024
    engine.get_sources("news", ["a"])
    assert "_source_exclude_vectors" not in requests[-1][1]
    engine, requests = engine_with(lambda m, t, b: (200, answer), "9.2.4")
    engine.get_sources("news", ["a"])
    assert "_source_exclude_vectors=false" in requests[-1][1]
    assert engine.max_clause_count is None


def test_bulk_sends_ndjson_and_reads_item_failures() -> None:
    items = [
        {"index": {"_id": "a#0", "status": 201}},
        {"index": {"_id": "b#0", "status": 400, "error": {
            "type": "document_parsing_exception", "reason": "bad",
            "caused_by": {"type": "illegal_argument_exception", "reason": "dots"}}}},
        {"index": {"_id": "c#0", "status": 429, "error": {
            "type": "es_rejected_execution_exception", "reason": "queue full"}}},
    ]
    engine, requests = engine_with(lambda m, t, b: (200, {"errors": True, "items": items}))
    docs = [(f"{x}#0", build_source(x, 0, vec({"u.s": 1.0}))) for x in "abc"]
    failures = engine.bulk_index("news", docs)
    assert failures == [
        BulkFailure("b#0", 400, "document_parsing_exception: bad (caused by "
                                "illegal_argument_exception: dots)"),
        BulkFailure("c#0", 429, "es_rejected_execution_exception: queue full"),
    ]
    method, target, headers, body = requests[0]
    assert (method, target) == ("POST", "/_bulk") and "x-ndjson" in headers["content-type"]
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert lines[0] == {"index": {"_index": "news", "_id": "a#0"}}
    assert lines[1]["pivot"] == {"u%2Es": 1.0}
    assert len(lines) == 6


def test_search_sends_sparse_vector_queries_and_reads_hits() -> None:
    answer = {"hits": {"hits": [{"_id": "a#0", "_score": 1.5, "_source": {"doc_id": "a"}}]}}
    engine, requests = engine_with(lambda m, t, b: (200, answer))
    query = SparseQuery(vec({"u.s": 2.0}, {"▁x": 1.0}), collapse=True)
    hits = engine.search("news", query, k=3)
    assert [(h.id, h.score, h.doc_id) for h in hits] == [("a#0", 1.5, "a")]
    method, target, _, body = requests[0]
    assert (method, target) == ("POST", "/news/_search")
    sent = json.loads(body)
    assert sent["size"] == 3 and sent["track_total_hits"] is False
    assert sent["collapse"] == {"field": "doc_id"}
    assert sent["query"]["bool"]["should"][0] == {
        "sparse_vector": {"field": "pivot", "query_vector": {"u%2Es": 2.0}, "prune": False}}


def test_a_long_query_is_not_cut() -> None:
    engine, requests = engine_with(lambda m, t, b: (200, {"hits": {"hits": []}}))
    terms = {f"t{i}": 1.0 for i in range(3000)}
    engine.search("news", SparseQuery(vec(terms)))
    sent = json.loads(requests[0][3])
    assert len(sent["query"]["bool"]["should"][0]["sparse_vector"]["query_vector"]) == 3000


@pytest.mark.parametrize(("status", "error", "expected"), [
    (429, {"type": "circuit_breaking_exception", "reason": "busy"}, TransientEngineError),
    (503, {"type": "unavailable", "reason": "down"}, TransientEngineError),
    (404, {"type": "index_not_found_exception", "reason": "no such index"}, IndexNotFoundError),
    (400, {"type": "parsing_exception", "reason": "bad query"}, EngineError),
])
def test_errors_are_classified(status: int, error: dict, expected: type) -> None:
    engine, _ = engine_with(lambda m, t, b: (status, {"error": error, "status": status}))
    with pytest.raises(expected, match=error["reason"]) as caught:
        engine.count("news")
    if expected is EngineError:
        assert not isinstance(caught.value, TransientEngineError)


def test_missing_index() -> None:
    error = {"error": {"type": "index_not_found_exception", "reason": "no such index [x]"}}
    engine, _ = engine_with(lambda m, t, b: (404, error))
    assert not engine.index_exists("x")
    engine.delete_index("x")
    with pytest.raises(IndexNotFoundError):
        engine.delete_index("x", missing_ok=False)


def test_connection_failure_is_transient() -> None:
    settings = ConnectionSettings(url="http://127.0.0.1:1", engine="elasticsearch", timeout=2)
    engine = ElasticsearchEngine(settings, client=Elasticsearch("http://127.0.0.1:1",
                                                                max_retries=0))
    with pytest.raises(TransientEngineError):
        engine.count("news")
