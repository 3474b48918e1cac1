"""LocalEngine.bulk_index_matrices: pre-encoded CSR matrices, same index as bulk_index."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from milco_os.core.errors import EngineError
from milco_os.engines.local import LocalEngine
from milco_os.engines.query import SparseQuery
from milco_os.vectors.sparse import SparseVector

META = {"model": "m", "views": ["pivot", "echo"], "pruning": "none"}
TERMS = {"pivot": ["dog", "cat", "fish", "unused"], "echo": ["\u2581Hund", "\u2581Katze"]}


def matrices() -> dict[str, sp.csr_matrix]:
    pivot = sp.csr_matrix(np.array([[2.0, 0, 1.0, 0], [0, 3.0, 0, 0], [0.5, 0.5, 0, 0]],
                                   dtype=np.float32))
    echo = sp.csr_matrix(np.array([[1.0, 0], [0, 0], [0, 4.0]], dtype=np.float32))
    return {"pivot": pivot, "echo": echo}


def as_dicts(ms) -> list[dict]:
    out = []
    for row in range(3):
        doc = {"doc_id": f"d{row}", "passage": 0}
        for view, m in ms.items():
            dense = m.toarray()[row]
            if dense.any():
                doc[view] = {TERMS[view][c]: float(dense[c]) for c in np.flatnonzero(dense)}
        out.append((f"d{row}", doc))
    return out


def test_matrices_index_like_bulk_index(tmp_path):
    fast, slow = LocalEngine(tmp_path / "fast"), LocalEngine(tmp_path / "slow")
    for engine in (fast, slow):
        engine.create_index("i", meta=META)
    docs = as_dicts(matrices())
    fast.bulk_index_matrices("i", [d for d, _ in docs], matrices(), TERMS,
                             [{"doc_id": s["doc_id"], "passage": 0} for _, s in docs])
    assert slow.bulk_index("i", docs) == []
    query = SparseQuery(SparseVector.from_dict({"pivot": {"dog": 1.0, "cat": 2.0},
                                                "echo": {"\u2581Katze": 1.0}}))
    found = [(h.id, h.score) for h in fast.search("i", query)]
    assert found == [(h.id, h.score) for h in slow.search("i", query)]
    assert found[:2] == [("d1", 6.0), ("d2", pytest.approx(0.5 * 1 + 0.5 * 2 + 4.0))]
    assert fast.get_sources("i", ["d0"]) == slow.get_sources("i", ["d0"])


def test_a_bad_weight_refuses_the_batch_naming_the_document(tmp_path):
    engine = LocalEngine(tmp_path)
    engine.create_index("i", meta=META)
    bad = matrices()
    bad["echo"].data[-1] = np.nan
    with pytest.raises(EngineError, match="document 'd2': field 'echo'"):
        engine.bulk_index_matrices("i", ["d0", "d1", "d2"], bad, TERMS)
    assert engine.count("i") == 0


def test_a_term_with_a_dot_is_refused(tmp_path):
    engine = LocalEngine(tmp_path)
    engine.create_index("i", meta=META)
    terms = {**TERMS, "pivot": ["dog", "c.at", "fish", "unused"]}
    with pytest.raises(EngineError, match="'c.at'"):
        engine.bulk_index_matrices("i", ["d0", "d1", "d2"], matrices(), terms)
