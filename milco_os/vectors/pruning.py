"""Per-text pruning of sparse vectors, view by view.

- ``topk(view, k)``: the ``k`` heaviest terms;
- ``mass(view, p)``: drop the lightest terms that together hold at most a fraction ``p``
  of the view's total weight (the paper's mass-based pruning), so the kept terms
  hold at least ``1 - p`` of it;
- ``threshold(view, t)``: terms with weight >= ``t``.

>>> v = SparseView.from_pairs([(1, "a", 4.0), (2, "b", 3.0), (3, "c", 1.0)])
>>> mass(v, 0.4).to_dict()  # c alone holds 1/8 <= 0.4 of the weight; b + c hold 1/2
{'a': 4.0, 'b': 3.0}
>>> rule = Pruning.parse("topk:1")
>>> rule.apply(SparseVector(v)).pivot.to_dict(), str(rule)
({'a': 4.0}, 'topk:1')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from milco_os.models.locations import DEFAULT_MODEL
from milco_os.vectors.sparse import VIEWS, SparseVector, SparseView


def topk(view: SparseView, k: int) -> SparseView:
    """The ``k`` highest-weight terms (ties broken by the view's order)."""
    if k < 1:  # topk:0 keeps no term: every query would match nothing
        raise ValueError(f"topk needs k >= 1 (k = 0 keeps no term), got {k}")
    order = np.argsort(-view.weights, kind="stable")[:k]
    return view.select(order)


def mass(view: SparseView, p: float) -> SparseView:
    """Drop the lowest-weight terms holding together at most a fraction ``p`` of the weight."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"mass pruning needs 0 <= p < 1, got {p}")
    if len(view) == 0 or p == 0.0:
        return view
    order = np.argsort(view.weights, kind="stable")  # lightest first
    dropped_mass = np.cumsum(view.weights[order].astype(np.float64))
    n_drop = int(np.searchsorted(dropped_mass, p * view.mass, side="right"))
    return view.select(order[n_drop:])


def threshold(view: SparseView, t: float) -> SparseView:
    """Terms whose weight is at least ``t`` (> 0: weights are never negative)."""
    if t <= 0:
        raise ValueError(f"threshold needs t > 0 (every weight is >= 0), got {t}")
    return view.select(np.flatnonzero(view.weights >= t))


_METHODS: dict[str, tuple[Callable[[SparseView, float], SparseView], Callable[[str], float]]] = {
    "topk": (lambda v, x: topk(v, int(x)), int),
    "mass": (mass, float),
    "threshold": (threshold, float),
}


@dataclass(frozen=True)
class Pruning:
    """A pruning rule applied to every view of every vector; parsed from a spec string.

    Specs: ``none``, ``topk:100``, ``mass:0.5``, ``threshold:0.1``.
    """

    method: str = "none"
    value: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Pruning:
        text = spec.strip().lower()
        if text in ("", "none"):
            return cls()
        method, sep, raw = text.partition(":")
        if not sep or method not in _METHODS:
            raise ValueError(f"bad pruning spec {spec!r}: expected none, "
                             "topk:K, mass:P or threshold:T")
        try:
            value = _METHODS[method][1](raw)
        except ValueError:
            raise ValueError(f"bad pruning spec {spec!r}: {raw!r} is not a valid "
                             f"{_METHODS[method][1].__name__} for {method}") from None
        if not math.isfinite(value):
            raise ValueError(f"bad pruning spec {spec!r}: {raw!r} is not a finite number")
        rule = cls(method, value)
        try:
            rule.apply_view(SparseView.empty())  # validates the value's range
        except ValueError as exc:
            raise ValueError(f"bad pruning spec {spec!r}: {exc}") from None
        return rule

    def apply_view(self, view: SparseView) -> SparseView:
        if self.method == "none":
            return view
        return _METHODS[self.method][0](view, self.value)

    def apply(self, vector: SparseVector) -> SparseVector:
        """The vector with each view pruned on its own."""
        return SparseVector(*(self.apply_view(vector.view(name)) for name in VIEWS))

    def __str__(self) -> str:
        if self.method == "none":
            return "none"
        value = int(self.value) if self.method == "topk" else self.value
        return f"{self.method}:{value}"


# Pruning measured best for a model (bench/pruning_curve.py, held-out NTREX-128 paragraphs
# and lines). Documents: milco-small with its 32 heaviest terms per view scores nDCG@10
# .940 on paragraphs (.944 unpruned, 62 terms per document against 585; topk:48 .945 and
# topk:64 .946 with 1.4-1.7x the terms, so longer posting lists, and a most common term
# in 33-37% of documents, not 24%) and .861 on lines (.860 unpruned, topk:48 and topk:64
# .861); topk:16 costs .017 on paragraphs, which are what users index. Queries, against
# those documents: topk:32 scores .936 and .858 (unpruned .940 and .861; whole
# paragraphs as queries) with a quarter to two fifths of the terms, and on 1M passages
# in OpenSearch (bench/bench_opensearch.py) cuts the full query's p50 1.29x and its p95
# from 53 to 36 ms (from 207 to 44 ms with an earlier model while long queries skipped);
# topk:16 costs .013 on lines.
# Other models: none.
RECOMMENDED_PRUNING = {DEFAULT_MODEL: {"document": "topk:32", "query": "topk:32"}}


def recommended_pruning(model: str | None, kind: str = "document") -> Pruning:
    """The pruning of ``kind`` texts (``document`` or ``query``) ``model`` (a name) is best
    used with; ``none`` if unknown.

    >>> str(recommended_pruning("milco-small")), str(recommended_pruning("milco-small", "query"))
    ('topk:32', 'topk:32')
    >>> str(recommended_pruning("x", "query"))
    'none'
    """
    return Pruning.parse(RECOMMENDED_PRUNING.get(str(model), {}).get(kind, "none"))


def term_stats(vectors: Iterable[SparseVector]) -> dict[str, float]:
    """Kept terms per text: mean and 95th percentile, per view and for both views together."""
    counts = np.array([[len(v.pivot), len(v.echo)] for v in vectors], dtype=np.float64)
    if counts.size == 0:
        counts = np.zeros((0, 2))
    stats: dict[str, float] = {"texts": float(len(counts))}
    for name, column in (("pivot", counts[:, 0]), ("echo", counts[:, 1]),
                         ("total", counts.sum(axis=1))):
        stats[f"{name}_mean"] = float(column.mean()) if len(column) else 0.0
        stats[f"{name}_p95"] = float(np.percentile(column, 95)) if len(column) else 0.0
    return stats
