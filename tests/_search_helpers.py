"""Random but realistic MILCO vectors for engine tests, and exact reference scores.

Terms come from the real vocabularies (BERT 30,522 word pieces; XLM-R 250,002
sentence pieces) when ``../shared`` is present, else from synthetic ones of the
same sizes; both contain terms with dots. Term frequencies follow a Zipf law so
that queries and documents share terms as real text does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

import numpy as np
import scipy.sparse as sp
from _shared import SHARED

from milco_os.engines.terms import engine_features
from milco_os.pipeline.documents import build_source
from milco_os.vectors.sparse import VIEWS, SparseVector, SparseView

PIVOT_SIZE, ECHO_SIZE = 30522, 250002


@cache
def vocabularies() -> dict[str, list[str]]:
    """``{"pivot": word pieces, "echo": sentence pieces}``."""
    if SHARED is not None:
        bert = SHARED / "models" / "splade-tiny" / "tokenizer.json"
        xlmr = SHARED / "models" / "xlmr-tokenizer" / "tokenizer.json"
        pivot_vocab = json.loads(bert.read_text(encoding="utf-8"))["model"]["vocab"]
        pivot = sorted(pivot_vocab, key=pivot_vocab.get)
        echo_vocab = json.loads(xlmr.read_text(encoding="utf-8"))["model"]["vocab"]
        echo = [piece for piece, _ in echo_vocab]
    else:
        pivot = [f"w{i}" if i % 50 else f"w.{i}" for i in range(PIVOT_SIZE)]
        echo = [f"\u2581p{i}" if i % 50 else f"\u2581p.{i}%" for i in range(ECHO_SIZE)]
    return {"pivot": pivot, "echo": echo}


def dotted(terms: list[str]) -> np.ndarray:
    return np.array([i for i, t in enumerate(terms) if "." in t])


@dataclass
class RandomVectors:
    """Draws sparse vectors: ``n`` terms per view within the given ranges."""

    seed: int = 0
    zipf: float = 1.1

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.vocab = vocabularies()
        self.cdfs = {}
        self.orders = {}
        self.dotted = {}
        for view, terms in self.vocab.items():
            ranks = np.arange(1, len(terms) + 1, dtype=np.float64)
            cdf = np.cumsum((ranks + 100) ** -self.zipf)
            self.cdfs[view] = cdf / cdf[-1]
            self.orders[view] = self.rng.permutation(len(terms))  # which term gets which rank
            self.dotted[view] = dotted(terms)

    def view(self, view: str, n: int) -> SparseView:
        cdf = self.cdfs[view]
        draws = np.minimum(np.searchsorted(cdf, self.rng.random(2 * n)), len(cdf) - 1)
        ranks = np.unique(draws)[:n]
        ids = self.orders[view][ranks]
        if self.rng.random() < 0.3:  # many real texts hold a dotted piece
            ids = np.unique(np.append(ids, self.rng.choice(self.dotted[view])))
        weights = self.rng.gamma(2.0, 0.5, size=len(ids)).astype(np.float32) + 0.01
        terms = [self.vocab[view][i] for i in ids]
        return SparseView.from_arrays(ids, weights, terms)

    def vector(self, pivot: tuple[int, int], echo: tuple[int, int]) -> SparseVector:
        return SparseVector(
            self.view("pivot", int(self.rng.integers(*pivot))),
            self.view("echo", int(self.rng.integers(*echo))),
        )


def corpus(n_docs: int, n_queries: int, seed: int = 0) -> tuple[list, list[SparseVector]]:
    """``([(engine id, source)], query vectors)``; doc i has id ``d{i//2}#{i%2}``."""
    draw = RandomVectors(seed)
    docs = []
    for i in range(n_docs):
        vector = draw.vector(pivot=(100, 300), echo=(20, 80))
        source = build_source(f"d{i // 2}", i % 2, vector, title=f"title {i}", lang="en")
        docs.append((f"d{i // 2}#{i % 2}", source))
    queries = [draw.vector(pivot=(20, 80), echo=(5, 20)) for _ in range(n_queries)]
    return docs, queries


def _csr(rows: list[dict[str, float]], columns: dict[str, int]) -> sp.csr_matrix:
    data, indices, indptr = [], [], [0]
    for row in rows:
        for t, w in row.items():
            indices.append(columns.setdefault(t, len(columns)))
            data.append(w)
        indptr.append(len(indices))
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), PIVOT_SIZE + ECHO_SIZE))


def exact_matrix(docs: list, queries: list[SparseVector], alpha: float | None = None) -> np.ndarray:
    """Brute-force dot products (float64) of every query with every document: [queries, docs]."""
    scales = dict.fromkeys(VIEWS, 1.0) if alpha is None else {"pivot": alpha, "echo": 1 - alpha}
    total = np.zeros((len(queries), len(docs)))
    for view in VIEWS:
        columns: dict[str, int] = {}
        d = _csr([source.get(view, {}) for _, source in docs], columns)
        q = _csr([engine_features(query.view(view)) for query in queries], columns)
        total += scales[view] * (q @ d.T).toarray()
    return total
