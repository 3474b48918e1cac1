"""The local engine's approximate index (Seismic candidates, exact re-scoring)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import milco_os.engines.approximate as approximate
from milco_os.engines.local import LocalEngine
from milco_os.engines.query import SparseQuery
from milco_os.vectors.sparse import SparseVector

pytest.importorskip("seismic", reason="pyseismic-lsr is the approximate extra")

META = {"model": "m", "views": ["pivot", "echo"], "pruning": "none"}


def vector(rng: np.random.Generator, pivot: int, echo: int) -> dict[str, dict[str, float]]:
    """Zipf-like terms of both views, as a MILCO document or query has."""
    def view(prefix: str, n: int, vocab: int) -> dict[str, float]:
        ranks = np.unique(np.minimum(rng.zipf(1.3, n), vocab))
        return {f"{prefix}{r}": float(w) for r, w in zip(ranks, rng.gamma(2, .5, len(ranks)) + .01,
                                                        strict=True)}
    return {"pivot": view("t", pivot, 3000), "echo": view("\u2581p", echo, 3000)}


def docs(rng, start: int, n: int) -> list[tuple[str, dict]]:
    return [(f"d{i}", {"doc_id": f"d{i}", "passage": 0, **vector(rng, 120, 30)})
            for i in range(start, start + n)]


def queries(rng, n: int) -> list[SparseQuery]:
    return [SparseQuery(SparseVector.from_dict(vector(rng, 30, 6))) for _ in range(n)]


@pytest.fixture
def built(tmp_path, monkeypatch):
    """An index of 3,000 documents in three segments, approximate index built; columns are
    cut into groups of 1,000 so several Seismic indexes are searched per query."""
    monkeypatch.setattr(approximate, "GROUP_WIDTH", 1000)
    rng = np.random.default_rng(0)
    engine = LocalEngine(tmp_path)
    engine.create_index("ann", meta=META)
    for start in range(0, 3000, 1000):
        assert engine.bulk_index("ann", docs(rng, start, 1000)) == []
    entry = engine.build_approximate("ann", approximate.BuildSettings(n_postings=400))
    assert len(entry["files"]) > 1
    return engine, tmp_path, rng


def top(engine: LocalEngine, query: SparseQuery, k: int = 10) -> list[tuple[str, float]]:
    return [(h.id, h.score) for h in engine.search("ann", query, k)]


def test_recall_against_the_exact_scan_and_scores_are_exact(built):
    engine, root, rng = built
    exact = LocalEngine(root, exact=True)
    overlap = []
    for query in queries(rng, 40):
        found, truth = top(engine, query), top(exact, query)
        truth_scores = dict(truth)
        overlap.append(len(set(truth_scores) & {i for i, _ in found}) / len(truth))
        full = {h.id: h.score for h in exact.search("ann", query, 3000)}
        assert all(score == pytest.approx(full[i], rel=1e-9) for i, score in found)
    assert np.mean(overlap) >= 0.95


def test_later_segments_and_replaced_ids_are_searched_exactly(built):
    engine, root, rng = built
    query = queries(rng, 1)[0]
    [(best_id, best_score)] = top(engine, query, 1)
    # a new document that matches the query better than anything, and a replacement of
    # the current best that no longer matches at all
    terms = query.vector.to_dict()
    newcomer = {"doc_id": "new", "passage": 0,
                **{v: {t: w * 100 for t, w in ts.items()} for v, ts in terms.items()}}
    assert engine.bulk_index("ann", [("new", newcomer),
                                      (best_id, {"doc_id": best_id, "passage": 0,
                                                 "pivot": {"zzz": 1.0}})]) == []
    hits = top(LocalEngine(root), query, 3000)
    assert hits[0][0] == "new"
    assert best_id not in {i for i, _ in hits}
    assert LocalEngine(root).count("ann") == 3001


def test_a_build_that_crashes_before_its_commit_leaves_the_index_exact(built, monkeypatch):
    engine, root, rng = built
    query = queries(rng, 1)[0]
    before = top(engine, query)
    manifest = json.loads((root / "ann" / "index.json").read_text())
    import milco_os.engines.local as local_module

    def crash(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(local_module.LocalEngine, "_write_manifest", crash)
        with pytest.raises(OSError, match="disk full"):
            engine.build_approximate("ann", approximate.BuildSettings(n_postings=400))
    assert json.loads((root / "ann" / "index.json").read_text()) == manifest
    assert top(LocalEngine(root), query) == before  # the committed index is still used
    # the next build removes the crashed build's files
    entry = LocalEngine(root).build_approximate("ann", approximate.BuildSettings(n_postings=400))
    left = sorted(p.name for p in (root / "ann").iterdir() if p.name.startswith("ann-"))
    assert left == sorted(f["file"] for f in entry["files"])


def test_an_index_without_an_approximate_index_is_searched_exactly(tmp_path):
    rng = np.random.default_rng(1)
    engine = LocalEngine(tmp_path)
    engine.create_index("ann", meta=META)
    engine.bulk_index("ann", docs(rng, 0, 200))
    query = queries(rng, 1)[0]
    assert top(engine, query) == top(LocalEngine(tmp_path, exact=True), query)


def test_bad_search_settings_are_refused():
    from milco_os.core.errors import InputError

    with pytest.raises(InputError, match="heap_factor"):
        approximate.SearchSettings(heap_factor=0)


def test_the_cli_builds_it_and_refuses_cluster_engines(tmp_path):
    from click.testing import CliRunner

    from milco_os.cli import main

    rng = np.random.default_rng(1)
    engine = LocalEngine(tmp_path)
    engine.create_index("ann", meta=META)
    assert engine.bulk_index("ann", docs(rng, 0, 500)) == []
    result = CliRunner().invoke(main, ["index", "approximate", "ann", "--engine", "local",
                                       "--local-path", str(tmp_path), "--n-postings", "300"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["rows"] == 500 and report["settings"]["n_postings"] == 300
    manifest = json.loads((tmp_path / "ann" / "index.json").read_text())
    assert manifest["approximate"]["rows"] == 500
    refused = CliRunner().invoke(main, ["index", "approximate", "ann", "--engine", "opensearch",
                                        "--url", "http://127.0.0.1:9"])
    assert refused.exit_code == 2 and "--engine local" in refused.output
    assert "Traceback" not in refused.output
