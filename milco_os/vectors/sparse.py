"""Sparse vectors: the typed hand-off between the model, pruning and the engines.

A MILCO text is encoded into two *views* over two vocabularies:

- ``pivot``: weights over the English (BERT word-piece) vocabulary;
- ``echo``: weights over the multilingual (XLM-R sentence-piece) vocabulary,
  empty for models without a LexEcho head.

Each view is a :class:`SparseView`: parallel arrays of term ids, term strings
and strictly positive weights, ordered by weight (highest first).

>>> v = SparseView.from_pairs([(7, "dog", 0.5), (3, "cat", 1.5)])
>>> v.to_dict()
{'cat': 1.5, 'dog': 0.5}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

VIEWS = ("pivot", "echo")


@dataclass(frozen=True)
class SparseView:
    """Positive term weights over one vocabulary, sorted by weight descending."""

    ids: np.ndarray  # int64, shape [n]
    weights: np.ndarray  # float32, shape [n], all > 0
    terms: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.weights) == len(self.terms)):
            raise ValueError(
                f"SparseView arrays differ in length: ids={len(self.ids)}, "
                f"weights={len(self.weights)}, terms={len(self.terms)}"
            )

    @classmethod
    def empty(cls) -> SparseView:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), ())

    @classmethod
    def from_arrays(
        cls, ids: np.ndarray, weights: np.ndarray, terms: Iterable[str]
    ) -> SparseView:
        """Build a view, keeping positive weights only and sorting by weight."""
        ids = np.asarray(ids, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float32)
        terms = tuple(terms)
        keep = weights > 0
        order = np.flatnonzero(keep)[np.argsort(-weights[keep], kind="stable")]
        return cls(ids[order], weights[order], tuple(terms[i] for i in order))

    @classmethod
    def from_pairs(cls, triples: Iterable[tuple[int, str, float]]) -> SparseView:
        triples = list(triples)
        if not triples:
            return cls.empty()
        ids, terms, weights = zip(*triples, strict=True)
        return cls.from_arrays(np.array(ids), np.array(weights), terms)

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, index: np.ndarray) -> SparseView:
        """The entries at ``index`` (positions into this view), order preserved."""
        index = np.sort(np.asarray(index, dtype=np.int64))
        return SparseView(self.ids[index], self.weights[index], tuple(self.terms[i] for i in index))

    def to_dict(self) -> dict[str, float]:
        """``{term: weight}`` with Python floats, highest weight first."""
        return {t: float(w) for t, w in zip(self.terms, self.weights, strict=True)}

    @property
    def mass(self) -> float:
        return float(self.weights.sum(dtype=np.float64))


@dataclass(frozen=True)
class SparseVector:
    """The encoding of one text: a pivot view and an echo (source) view."""

    pivot: SparseView
    echo: SparseView = field(default_factory=SparseView.empty)

    def view(self, name: str) -> SparseView:
        if name not in VIEWS:
            raise ValueError(f"unknown view {name!r}; expected one of {VIEWS}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{"pivot": {term: weight}, "echo": {term: weight}}``."""
        return {"pivot": self.pivot.to_dict(), "echo": self.echo.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, float]]) -> SparseVector:
        """Inverse of :meth:`to_dict` (term ids are not kept: set to -1)."""

        def view(d: Mapping[str, float] | None) -> SparseView:
            d = d or {}
            return SparseView.from_arrays(
                np.full(len(d), -1), np.array(list(d.values()), np.float32), d.keys()
            )

        return cls(view(data.get("pivot")), view(data.get("echo")))


def to_csr(vectors: Sequence[SparseVector], view: str, width: int | None = None,
           dtype: type = np.float32) -> sp.csr_matrix:
    """One view of ``vectors`` as a [len(vectors), width] CSR matrix of term weights.

    ``width`` defaults to one past the highest term id present, so two matrices meant
    to be multiplied should be built with the same ``width``.

    >>> v = SparseVector(SparseView.from_pairs([(2, "cat", 1.5)]))
    >>> to_csr([v, v], "pivot").toarray().tolist()
    [[0.0, 0.0, 1.5], [0.0, 0.0, 1.5]]
    """
    views = [v.view(view) for v in vectors]
    ids = np.concatenate([v.ids for v in views] + [np.zeros(0, np.int64)])
    weights = np.concatenate([v.weights for v in views] + [np.zeros(0, np.float32)])
    if (ids < 0).any():
        raise ValueError("to_csr needs term ids; these vectors have none (built from dicts?)")
    if width is None:
        width = int(ids.max()) + 1 if len(ids) else 0
    indptr = np.cumsum([0] + [len(v) for v in views])
    return sp.csr_matrix((weights.astype(dtype), ids, indptr), shape=(len(views), width))
