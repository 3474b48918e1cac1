"""One engine contract, three real servers: OpenSearch 2.19.6, OpenSearch 3.3.2 and
Elasticsearch 9.2.4 (``server`` in conftest.py), each a node started by the session.

Engine scores equal exact dot products up to Lucene's 9-bit storage of document
weights; the traps of docs/search-engines.md that both engines share are pinned here.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from _ingest_helpers import write_corpus
from _search_helpers import corpus, exact_matrix
from click.testing import CliRunner

from milco_os.cli import main
from milco_os.core.errors import IncompatibleIndexError
from milco_os.engines import (
    BulkFailure,
    EngineError,
    IndexNotFoundError,
    TransientEngineError,
    open_engine,
)
from milco_os.engines.cluster import ClusterEngine
from milco_os.engines.connection import ConnectionSettings
from milco_os.engines.query import (
    EmptyQueryWarning,
    QueryPrunedWarning,
    SparseQuery,
    build_search_body,
)
from milco_os.engines.terms import encode_term
from milco_os.index.spec import BatchSizes, IngestSpec
from milco_os.pipeline.documents import build_source
from milco_os.pipeline.ingest import Ingestor
from milco_os.pipeline.search import Searcher, SearchOptions
from milco_os.text.corpus import read_files
from milco_os.vectors.sparse import SparseVector, SparseView

pytestmark = pytest.mark.cluster

# The contract's three servers, and the lowest and highest Elasticsearch 8.x supported.
SERVERS = ["opensearch-2.19.6", "opensearch-3.3.2", "elasticsearch-9.2.4",
           "elasticsearch-8.11.3", "elasticsearch-8.19.21"]

META = {"model": "test-model", "views": ["pivot", "echo"], "pruning": "none"}
PRECISION = 0.005  # engine scores within 0.5% of exact (9-bit document weights)
TOP10_AGREEMENT = 0.98


def vec(pivot: dict[str, float], echo: dict[str, float] | None = None) -> SparseVector:
    def view(d: dict[str, float]) -> SparseView:
        return SparseView.from_arrays(np.arange(len(d)), np.array(list(d.values())), d)

    return SparseVector(view(pivot), view(echo or {}))


@pytest.fixture(scope="module")
def engine(server) -> ClusterEngine:
    opened = server.open()
    assert opened.name == server.engine
    return opened


@pytest.fixture
def index(engine: ClusterEngine) -> Iterator[str]:
    name = f"test-search-{uuid.uuid4().hex[:10]}"
    with warnings.catch_warnings():  # Elasticsearch's integ-test-zip has no language analyzers
        warnings.simplefilter("ignore")
        engine.create_index(name, meta=META)
    yield name
    engine.delete_index(name)


def put(engine: ClusterEngine, index: str, docs: list[tuple[str, dict]]) -> None:
    assert engine.bulk_index(index, docs) == []
    engine.refresh(index)


def ids(hits) -> list[str]:
    return [h.id for h in hits]


def test_index_lifecycle(engine: ClusterEngine, index: str) -> None:
    name = f"test-search-{uuid.uuid4().hex[:10]}"
    assert not engine.index_exists(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine.create_index(name, meta=META, refresh_interval="5s")
        engine.create_index(name, meta=META, exist_ok=True)
        with pytest.raises(EngineError, match="already_exists"):
            engine.create_index(name, meta=META)
    info = engine.index_info(name)
    assert info["meta"]["model"] == "test-model" and info["meta"]["milco_os_version"]
    assert info["settings"] == {"shards": 1, "replicas": 0, "refresh_interval": "5s"}
    engine.update_meta(name, {"resting_refresh_interval": "5s"})
    assert engine.meta(name) == {**info["meta"], "resting_refresh_interval": "5s"}
    put(engine, name, [("a#0", build_source("a", 0, vec({"x": 1.0})))])
    assert engine.count(name) == 1 and engine.index_info(name)["docs"] == 1
    # the size is read now, not from the store stats the engine caches for 10 s
    assert engine.index_info(name)["store_bytes"] > 1000
    assert engine.existing_ids(name, ["a#0", "b#0"]) == {"a#0"}
    assert engine.get_sources(name, ["a#0"])["a#0"]["pivot"] == {"x": 1.0}  # vectors come back
    engine.delete_index(name)
    engine.delete_index(name)  # missing_ok
    with pytest.raises(IndexNotFoundError):
        engine.delete_index(name, missing_ok=False)
    with pytest.raises(IndexNotFoundError):
        engine.count(name)


def test_mapping_uses_only_what_the_cluster_has(engine: ClusterEngine, server) -> None:
    """Language sub-fields where analysis-common exists, else a warning and `standard`;
    Elasticsearch's `prune: false` wherever index-time pruning exists."""
    name = f"test-search-{uuid.uuid4().hex[:10]}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.create_index(name, meta=META)
    try:
        mapping = next(iter(engine.request("GET", f"/{name}/_mapping").values()))["mappings"]
        text = mapping["properties"]["text"]
        if engine.has_language_analyzers:
            assert text["fields"]["en"]["analyzer"] == "english" and not caught
        else:
            assert "fields" not in text
            assert any("analysis-common" in str(w.message) for w in caught)
        pivot = mapping["properties"]["pivot"]
        if server.engine == "elasticsearch":
            assert pivot["type"] == "sparse_vector"
            # index-time pruning (and so its switch) exists from 8.19 and 9.1 on
            version = tuple(int(part) for part in server.version.split("."))
            prunes = version >= (9, 1) or (8, 19) <= version < (9,)
            assert pivot.get("index_options") == ({"prune": False} if prunes else None)
        else:
            assert pivot == {"type": "rank_features"}
    finally:
        engine.delete_index(name)


def test_escaped_dotted_names_match(engine: ClusterEngine, index: str) -> None:
    put(engine, index, [("safe", build_source("safe", 0, vec({"u.s": 2.0, "a": 1.0})))])
    hits = engine.search(index, SparseQuery(vec({"u.s": 1.5})))
    assert ids(hits) == ["safe"]
    assert hits[0].score == pytest.approx(3.0, rel=PRECISION)


def test_a_query_without_terms_finds_no_document(engine: ClusterEngine, index: str) -> None:
    put(engine, index, [("doc", build_source("doc", 0, vec({"a": 1.0})))])
    with pytest.warns(EmptyQueryWarning):
        assert engine.search(index, SparseQuery(vec({}))) == []


def test_bad_weights(engine: ClusterEngine, index: str) -> None:
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
    stored = engine.get_sources(index, ["fixed"])["fixed"]["pivot"]
    assert stored == pytest.approx({"ok": 2.0, "tiny": 1.17549435e-38}, rel=PRECISION)


def test_duplicate_features_rejected_by_engine_and_summed_by_us(
    engine: ClusterEngine, index: str
) -> None:
    action = json.dumps({"index": {"_index": index, "_id": "dup"}})
    answer = engine.request("POST", "/_bulk", f'{action}\n{{"pivot": {{"a": 1.0, "a": 2.0}}}}\n',
                            ndjson=True)
    assert answer["errors"] and answer["items"][0]["index"]["status"] == 400
    view = SparseView(np.arange(3), np.array([1.0, 2.0, 0.5], np.float32), ("a", "a", "b"))
    put(engine, index, [("merged", build_source("merged", 0, SparseVector(view)))])
    hits = engine.search(index, SparseQuery(vec({"a": 1.0})))
    assert hits[0].score == pytest.approx(3.0, rel=PRECISION)


def test_clause_limit(engine: ClusterEngine, index: str) -> None:
    """Where each term is a clause (OpenSearch, Elasticsearch 8.x), a long query is cut to
    its highest-weighted terms with a warning; one `sparse_vector` clause is never cut."""
    terms = {f"t{i}": 1.0 + i / 1500 for i in range(1500)}
    put(engine, index, [("d", build_source("d", 0, vec(terms)))])
    query = SparseQuery(vec(terms))
    limit = engine.max_clause_count
    if limit is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            hits = engine.search(index, query)
        assert hits[0].score == pytest.approx(sum(w * w for w in terms.values()), rel=PRECISION)
        return
    assert limit == 1024
    unbounded = build_search_body(query, flavour=engine.query_flavour, max_clause_count=None)
    if engine.name == "opensearch":  # Elasticsearch 8.x sizes its real limit from the heap
        with pytest.raises(EngineError, match="(?i)maxClauseCount|too_many_nested_clauses"):
            engine.raw_search(index, unbounded)
    with pytest.warns(QueryPrunedWarning, match="max_clause_count"):
        hits = engine.search(index, query)
    kept = sorted(terms.values())[-1024:]  # the highest-weighted terms
    assert hits[0].score == pytest.approx(sum(w * w for w in kept), rel=PRECISION)


def test_nine_bit_precision(engine: ClusterEngine, index: str) -> None:
    weight = 1.0 + 511 / 512  # needs 10 significant bits: Lucene keeps 9
    put(engine, index, [("d", build_source("d", 0, vec({"a": weight})))])
    score = engine.search(index, SparseQuery(vec({"a": 1.0})))[0].score
    assert score != weight and score == pytest.approx(weight, rel=PRECISION)


def test_alpha_scales_views(engine: ClusterEngine, index: str) -> None:
    put(engine, index, [("d", build_source("d", 0, vec({"a": 2.0}, {"\u2581a": 4.0})))])
    query = vec({"a": 1.0}, {"\u2581a": 1.0})
    released = engine.search(index, SparseQuery(query))[0].score
    assert released == pytest.approx(6.0, rel=PRECISION)
    half = engine.search(index, SparseQuery(query, alpha=0.5))[0].score
    assert half == pytest.approx(released / 2, rel=1e-6)
    assert engine.search(index, SparseQuery(query, alpha=1.0))[0].score == pytest.approx(2.0)


def test_neural_sparse_needs_the_plugin(engine: ClusterEngine, index: str) -> None:
    assert not engine.supports_neural_sparse  # no local distribution has the plugin
    with pytest.raises(EngineError, match="neural-search"):
        engine.search(index, SparseQuery(vec({"a": 1.0}), mode="neural-sparse"))


@pytest.fixture(scope="module")
def big_index(engine: ClusterEngine) -> Iterator[tuple[str, list, list]]:
    docs, queries = corpus(1800, 60, seed=7)
    name = f"test-search-big-{uuid.uuid4().hex[:10]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine.create_index(name, meta=META, refresh_interval="-1")
    for start in range(0, len(docs), 200):
        assert engine.bulk_index(name, docs[start:start + 200]) == []
    engine.refresh(name)
    yield name, docs, queries
    engine.delete_index(name)


def test_engine_top10_equals_exact_dot_products(engine: ClusterEngine, big_index,
                                                server) -> None:
    name, docs, queries = big_index
    exact = exact_matrix(docs, queries)
    row = {doc_id: i for i, (doc_id, _) in enumerate(docs)}
    same = total = 0
    scored_completely = [engine.search_body(SparseQuery(q), 10)["track_total_hits"]
                         for q in queries]
    assert 0 < sum(scored_completely) < len(queries)  # both of Lucene's ways are checked
    for q, query in enumerate(queries):
        hits = engine.search(name, SparseQuery(query), k=10)
        expected = [docs[i][0] for i in np.argsort(-exact[q], kind="stable")[:10]]
        same += sum(a == b for a, b in zip(ids(hits), expected, strict=True))
        total += 10
        for hit in hits:
            assert hit.score == pytest.approx(exact[q, row[hit.id]], rel=PRECISION)
            assert hit.source["doc_id"] == hit.id.split("#")[0] and "pivot" not in hit.source
    print(f"\n{server.id}: top-10 agreement with exact scores {same}/{total} "
          f"({same / total:.1%})")
    assert same / total >= TOP10_AGREEMENT, f"{total - same} of {total} top-10 positions differ"


def test_two_phase_and_hybrid(engine: ClusterEngine, big_index) -> None:
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


def test_collapse_by_document(engine: ClusterEngine, big_index) -> None:
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


class Fixed:
    """An encoder that returns given vectors (the engine, not a model, is under test)."""

    def __init__(self, vectors) -> None:
        self.vectors = vectors

    def encode(self, texts, kind="query"):
        return [self.vectors(t) for t in texts]


def test_explain_sums_to_the_score(engine: ClusterEngine, big_index) -> None:
    name, _, queries = big_index
    searcher = Searcher(engine, name, Fixed(lambda t: queries[int(t)]), SearchOptions(alpha=0.5))
    for text, hits in zip(["0", "1", "2"], searcher.search(["0", "1", "2"], k=3), strict=True):
        for hit in hits:
            explanation = searcher.explain(hit, queries[int(text)])
            assert explanation.contributions and explanation.agrees()
            assert math.isclose(explanation.exact_score, hit.score, rel_tol=PRECISION)


def test_bm25_equals_the_local_engines(engine: ClusterEngine, index: str, server,
                                       tmp_path) -> None:
    """The local engine's BM25 gives the cluster's scores (documents short enough that
    Lucene stores their lengths exactly), best field of title and text, hybrid too;
    OpenSearch 2 and Elasticsearch score with Lucene's legacy BM25, k1 + 1 times more."""
    legacy = 2.2 if not (server.engine == "opensearch" and server.version >= "3") else 1.0
    rng = np.random.default_rng(7)
    words = ["river", "stone", "bridge", "city", "night", "train", "music", "garden",
             "winter", "market", "北", "京", "station", "harbour", "school", "paper"]
    docs = []
    for i in range(60):
        text = " ".join(rng.choice(words, size=rng.integers(3, 20)))
        title = " ".join(rng.choice(words, size=2)) if i % 3 else None
        docs.append((f"d{i}#0", build_source(f"d{i}", 0, vec({"x": 0.1 * (i % 7 + 1)}),
                                             title=title, text=text)))
    put(engine, index, docs)
    local = open_engine(None, "local", local_path=str(tmp_path))
    local.create_index("same", meta=META)
    local.bulk_index("same", docs)
    for query in ("river", "night train", "stone bridge city", "北京", "harbour harbour"):
        want = {h.id: h.score / legacy for h in engine.bm25_search(index, query, k=60)}
        got = {h.id: h.score for h in local.bm25_search("same", query, k=60)}
        assert got == pytest.approx(want, rel=1e-4), query
        hybrid = SparseQuery(vec({"x": 1.0}), mode="hybrid", text=query, bm25_boost=1 / legacy)
        want = {h.id: h.score for h in engine.search(index, hybrid, k=60)}
        got = {h.id: h.score for h in local.search("same", replace(hybrid, bm25_boost=1.0),
                                                   k=60)}
        assert got == pytest.approx(want, rel=PRECISION), query


def test_explain_cross_lingual_match(engine: ClusterEngine, index: str) -> None:
    english = vec({"dog": 2.0, "park": 1.0, ".": 0.5}, {"\u2581dog": 1.0})
    put(engine, index, [("en#0", build_source("en", 0, english, text="The dog ran.", lang="en"))])
    chinese = vec({"dog": 1.5, "animal": 0.7, ".": 0.1}, {"\u2581狗": 2.0})
    searcher = Searcher(engine, index, Fixed(lambda t: chinese))
    [[hit]] = searcher.search(["狗在公园里跑。"])
    explanation = searcher.explain(hit, chinese)
    assert [(c.view, c.term) for c in explanation.contributions] == [("pivot", "dog"),
                                                                     ("pivot", ".")]
    assert explanation.agrees() and "dog" in explanation.format()
    assert encode_term(".") not in explanation.format()


def test_bulk_reports_each_failure(engine: ClusterEngine, index: str) -> None:
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


def test_unreachable_cluster_is_transient(server) -> None:
    engine = open_engine(ConnectionSettings(url="http://127.0.0.1:1", engine=server.engine,
                                            timeout=2))
    with pytest.raises(TransientEngineError):
        engine.count("anything")


def ingest(engine, index: str, path, **kwargs):
    spec = IngestSpec(index=index, model=kwargs.pop("model", None),
                      batch=BatchSizes(encode=5, bulk_docs=7))
    return Ingestor(engine, spec, progress=False, max_wait=0.01, **kwargs).run(read_files([path]))


def test_bad_documents_cost_only_themselves(engine: ClusterEngine, tmp_path) -> None:
    rows = write_corpus(tmp_path / "c.jsonl", 10)
    bad = [{"id": "nan", "text": "x", "pivot": {"a": float("nan")}},
           {"id": "zero", "text": "x", "pivot": {"a": 0.0}},
           {"id": "", "text": "no id"}]
    with (tmp_path / "c.jsonl").open("a") as out:
        out.writelines(json.dumps(r) + "\n" for r in bad)
    name = f"test-ingest-{uuid.uuid4().hex[:10]}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = ingest(engine, name, tmp_path / "c.jsonl")
        engine.refresh(name)
        good = [f"{r['id']}#0" for r in rows]
        assert engine.existing_ids(name, [*good, "nan#0"]) == set(good)
        assert report.read == len(rows) + len(bad)
        assert report.indexed + report.failed == report.read  # each record ends once
        assert engine.count(name) == report.indexed
    finally:
        engine.delete_index(name)


def test_an_index_built_by_another_model_is_refused(engine: ClusterEngine, tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 3)
    name = f"test-ingest-{uuid.uuid4().hex[:10]}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ingest(engine, name, tmp_path / "c.jsonl", model="model-a")
        with pytest.raises(IncompatibleIndexError, match="model-a"):
            ingest(engine, name, tmp_path / "c.jsonl", model="model-b")
    finally:
        engine.delete_index(name)


def settled_count(engine, index: str, pause: float = 0.5) -> int:
    """The index's document count once two counts ``pause`` seconds apart agree."""
    previous = -1
    while (count := (engine.refresh(index), engine.count(index))[1]) != previous:
        previous = count
        time.sleep(pause)
    return count


def test_killed_ingest_resumes_without_loss_or_duplicates(engine: ClusterEngine, server,
                                                          tmp_path) -> None:
    total = 3000
    write_corpus(tmp_path / "c.jsonl", total)
    (tmp_path / "spec.yaml").write_text(
        f"source: {{files: [{tmp_path / 'c.jsonl'}]}}\nbatch: {{encode: 20, bulk_docs: 20}}\n")
    name = f"test-resume-{uuid.uuid4().hex[:10]}"
    options = ["ingest", "--index", name, "--spec", str(tmp_path / "spec.yaml"),
               "--url", server.url, "--engine", server.engine, "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "milco_os.cli", *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if engine.index_exists(name) and (engine.refresh(name), engine.count(name))[1] >= 200:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the first run finished before it was killed"
        done_before = settled_count(engine, name)  # a bulk sent before the kill may land
        assert 0 < done_before < total
        result = CliRunner().invoke(main, [*options, "--resume"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["skipped"] == done_before  # nothing already indexed is sent again
        assert report["skipped"] + report["indexed"] == total
        assert settled_count(engine, name) == total
    finally:
        engine.delete_index(name)
