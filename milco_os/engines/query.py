"""Query DSL for MILCO sparse vectors on OpenSearch and Elasticsearch.

A :class:`SparseQuery` holds one query vector and the search options;
:func:`build_search_body` turns it into a ``_search`` request body.

Scores. The released MILCO score is the plain sum
``dot(pivot_q, pivot_d) + dot(echo_q, echo_d)``. With ``alpha=None`` (the
default) every query term is sent with its own weight as boost, so the engine
score IS that sum (up to Lucene's 9-bit storage of document weights, < 0.4%).
With ``alpha`` set, pivot terms are weighted ``alpha * w`` and echo terms
``(1 - alpha) * w``; ``alpha=0.5`` ranks exactly like the released sum with
every score halved, and other values trade the two views off.

Each term is one ``rank_feature`` clause with the ``linear`` function (the
default ``saturation`` function is not a dot product) inside ``bool.should``.
``track_total_hits: false`` lets Lucene skip documents that cannot reach the top k,
for queries of up to :data:`COMPLETE_SCORING_ABOVE` terms (see there).

Modes:

- ``default``: the exact sparse dot product;
- ``two-phase``: phase 1 searches with the terms weighing at least
  ``prune_ratio`` x the top weight; the best ``k * expansion_rate`` hits are
  then rescored with the remaining terms added, so their scores are exact
  (what OpenSearch's ``neural_sparse_two_phase_processor`` does, without the plugin);
- ``hybrid``: the sparse clauses plus a BM25 ``multi_match`` on ``text_fields``;
- ``neural-sparse``: OpenSearch's ``neural_sparse`` query with ``query_tokens``
  (needs the neural-search plugin).

Queries longer than the cluster's ``indices.query.bool.max_clause_count``
would fail; they are cut to the highest-weighted terms that fit, with a
:class:`QueryPrunedWarning` naming the setting to raise.

>>> from milco_os.vectors.sparse import SparseVector, SparseView
>>> q = SparseQuery(SparseVector(SparseView.from_pairs([(1, "dog", 2.0)])))
>>> build_search_body(q, k=3)["query"]
{'bool': {'should': [{'rank_feature': {'field': 'pivot.dog', 'linear': {}, 'boost': 2.0}}]}}
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from milco_os.engines.terms import convert_view
from milco_os.vectors.sparse import VIEWS, SparseVector

MODES = ("default", "two-phase", "hybrid", "neural-sparse")
FLAVOURS = ("opensearch", "elasticsearch", "elasticsearch-terms")
DEFAULT_MAX_CLAUSE_COUNT = 1024  # Lucene's and OpenSearch's default
NEURAL_SPARSE_MAX_WEIGHT = 64.0  # neural_sparse accepts query_tokens weights in (0, 64]
CLAUSE_SETTING = "indices.query.bool.max_clause_count"
HIT_SOURCE_EXCLUDES = list(VIEWS)  # hits carry metadata; explain fetches vectors itself

Terms = dict[str, dict[str, float]]  # view -> {escaped term: weighted query weight}


# Two-phase defaults, from bench/bench_opensearch.py on milco-small's vectors (20k, 100k
# and 1M passages): the setting whose top 10 keeps most of the full query's at every size
# (.993, .991, .978; .989 and .978 at 100k and 1M with the reshipped model), at most 3 ms
# p50 slower than 0.1 and 10 (.993, .985, .974). The
# plugin's 0.4 and 5 kept .59-.73 there, and 0.2 kept .95 at 1M: few query terms weigh
# >= 0.4 x the top one.
TWO_PHASE_PRUNE_RATIO = 0.1
TWO_PHASE_EXPANSION_RATE = 20.0

# Lucene scores a disjunction in one of two ways. With ``track_total_hits: false`` it skips
# the documents that cannot reach the top k (MaxScore); with it true it scores every matching
# document in windows (BooleanScorer) and counts them. Skipping wins on short queries, but
# with many clauses of similar maximum score it costs more than it saves: at 100,000
# passages an unpruned milco-small query of 574 terms took 1.9 s skipping and 72 ms
# scoring all (1M: 3.4 s and 0.6 s). Over 100 unpruned queries, scoring all above 64 terms
# kept p50 (34.4 ms at 1M, 13.4 -> 12.3 ms at 100k) and cut p95 from 238 to 102 ms (1M) and
# from 69 to 19 ms (100k) (bench/bench_opensearch.py, "scoring").
COMPLETE_SCORING_ABOVE = 64


class QueryPrunedWarning(UserWarning):
    """A query had more terms than the cluster allows and was cut."""


class EmptyQueryWarning(UserWarning):
    """A query has no term left (all pruned away): it matches nothing."""


# An empty ``bool.should`` matches EVERY document (score 1.0) in OpenSearch and
# Elasticsearch; a query without terms must match none, as the local engine does.
MATCH_NONE = {"match_none": {}}


@dataclass(frozen=True)
class SparseQuery:
    """One query vector plus how to search with it.

    ``alpha``: ``None`` for the released score (plain sum of the two views),
    else pivot x ``alpha`` + echo x ``(1 - alpha)``. ``text``: the query text,
    required by ``mode="hybrid"``. ``collapse``: one hit per ``doc_id`` (its best
    passage). ``max_clauses``: a clause limit below the cluster's, to cut long queries.
    """

    vector: SparseVector
    alpha: float | None = None
    mode: str = "default"
    text: str | None = None
    text_fields: tuple[str, ...] = ("title", "text")
    bm25_boost: float = 1.0
    prune_ratio: float = TWO_PHASE_PRUNE_RATIO
    expansion_rate: float = TWO_PHASE_EXPANSION_RATE
    collapse: bool = False
    max_clauses: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] or None, got {self.alpha}")
        if self.mode == "hybrid" and not self.text:
            raise ValueError("mode 'hybrid' needs the query text for BM25")
        if not 0.0 < self.prune_ratio <= 1.0:
            raise ValueError(f"prune_ratio must be in (0, 1], got {self.prune_ratio}")
        if self.expansion_rate < 1.0:
            raise ValueError(f"expansion_rate must be >= 1, got {self.expansion_rate}")
        if self.collapse and self.mode == "two-phase":
            raise ValueError("collapse cannot be combined with two-phase (engines forbid "
                             "collapse with rescore)")
        if self.max_clauses is not None and self.max_clauses < 1:
            raise ValueError(f"max_clauses must be >= 1, got {self.max_clauses}")

    def view_scales(self) -> dict[str, float]:
        """The factor applied to each view's query weights."""
        if self.alpha is None:
            return dict.fromkeys(VIEWS, 1.0)
        return {"pivot": self.alpha, "echo": 1.0 - self.alpha}

    def weighted_terms(self) -> Terms:
        """Engine-safe query terms per view, weights already multiplied by the view scale."""
        terms: Terms = {}
        for view, scale in self.view_scales().items():
            features = convert_view(self.vector.view(view), record=f"query {view}").features
            terms[view] = {t: w * scale for t, w in features.items() if w * scale > 0}
        return terms


def count_terms(terms: Terms) -> int:
    return sum(len(v) for v in terms.values())


def keep_top_terms(terms: Terms, limit: int) -> Terms:
    """The ``limit`` highest-weighted terms over all views (ties: pivot first, then order)."""
    ranked = sorted(
        ((w, view, t) for view, ts in terms.items() for t, w in ts.items()),
        key=lambda x: -x[0],
    )
    kept = {(view, t) for _, view, t in ranked[:limit]}
    return {view: {t: w for t, w in ts.items() if (view, t) in kept} for view, ts in terms.items()}


def fit_clause_limit(terms: Terms, limit: int | None) -> Terms:
    """``terms`` cut to ``limit`` clauses, warning when anything is dropped."""
    total = count_terms(terms)
    if limit is None or total <= limit:
        return terms
    warnings.warn(
        f"the query has {total} terms but only {limit} clauses fit under the clause limit: "
        f"kept the {limit} highest-weighted; raise the cluster setting {CLAUSE_SETTING} "
        f"(dynamic in OpenSearch >= 2.16) to search with all of them",
        QueryPrunedWarning,
        stacklevel=3,
    )
    return keep_top_terms(terms, limit)


def searched_terms(query: SparseQuery, limit: int | None) -> Terms:
    """The query's weighted terms cut to ``limit`` clauses; warns when none is left
    (a hybrid query still has its text)."""
    terms = fit_clause_limit(query.weighted_terms(), limit)
    if not count_terms(terms) and query.mode != "hybrid":
        warnings.warn("the query has no term left (pruned away, or a text without any): it "
                      "matches no document", EmptyQueryWarning, stacklevel=3)
    return terms


def split_by_weight(terms: Terms, ratio: float) -> tuple[Terms, Terms]:
    """(terms weighing >= ratio x the top weight, the rest)."""
    top = max((w for ts in terms.values() for w in ts.values()), default=0.0)
    high = {v: {t: w for t, w in ts.items() if w >= ratio * top} for v, ts in terms.items()}
    low = {v: {t: w for t, w in ts.items() if w < ratio * top} for v, ts in terms.items()}
    return high, low


def rank_feature_clauses(terms: Terms) -> list[dict[str, Any]]:
    """One linear ``rank_feature`` clause per term: score = sum(boost x document weight)."""
    return [
        {"rank_feature": {"field": f"{view}.{t}", "linear": {}, "boost": w}}
        for view, ts in terms.items()
        for t, w in ts.items()
    ]


def sparse_vector_clauses(terms: Terms) -> list[dict[str, Any]]:
    """Elasticsearch ``sparse_vector`` queries, one per view, with pruning off."""
    return [
        {"sparse_vector": {"field": view, "query_vector": ts, "prune": False}}
        for view, ts in terms.items()
        if ts
    ]


def term_clauses(terms: Terms) -> list[dict[str, Any]]:
    """Elasticsearch 8.x without the ML plugin (no ``sparse_vector`` query): one ``term``
    clause per term on the ``sparse_vector`` field, boosted by its weight, which scores the
    same linear dot product."""
    return [
        {"term": {view: {"value": t, "boost": w}}}
        for view, ts in terms.items()
        for t, w in ts.items()
    ]


def neural_sparse_clauses(terms: Terms) -> list[dict[str, Any]]:
    """OpenSearch ``neural_sparse`` queries, one per view.

    Token weights must lie in (0, 64]: when a view's top weight is above 64, all
    its weights are divided by ``top / 64`` and the clause is boosted by the same
    factor, so scores stay the same.
    """
    clauses = []
    for view, ts in terms.items():
        if not ts:
            continue
        factor = max(1.0, max(ts.values()) / NEURAL_SPARSE_MAX_WEIGHT)
        tokens = {t: min(w / factor, NEURAL_SPARSE_MAX_WEIGHT) for t, w in ts.items()}
        clauses.append({"neural_sparse": {view: {"query_tokens": tokens, "boost": factor}}})
    return clauses


def sparse_clauses(terms: Terms, flavour: str, mode: str) -> list[dict[str, Any]]:
    if mode == "neural-sparse":
        if flavour != "opensearch":
            raise ValueError("mode 'neural-sparse' is an OpenSearch neural-search query")
        return neural_sparse_clauses(terms)
    if flavour == "elasticsearch":
        return sparse_vector_clauses(terms)
    if flavour == "elasticsearch-terms":
        return term_clauses(terms)
    return rank_feature_clauses(terms)


def bm25_body(text: str, k: int, fields: Sequence[str], collapse: bool = False
              ) -> dict[str, Any]:
    """A ``_search`` body for BM25 alone: a ``multi_match`` (best field) on ``fields``.

    >>> bm25_body("dog", 5, ["title", "text"])["query"]
    {'multi_match': {'query': 'dog', 'fields': ['title', 'text']}}
    """
    body: dict[str, Any] = {"size": k, "track_total_hits": False,
                            "_source": {"excludes": HIT_SOURCE_EXCLUDES},
                            "query": {"multi_match": {"query": text, "fields": list(fields)}}}
    if collapse:
        body["collapse"] = {"field": "doc_id"}
    return body


def text_clause_estimate(query: SparseQuery) -> int:
    """An upper bound of the clauses the BM25 part may expand to (one per word character:
    the standard analyzer makes one token per CJK character)."""
    if query.mode != "hybrid" or not query.text:
        return 0
    return len(re.findall(r"\w", query.text)) * len(query.text_fields)


def sparse_clause_limit(query: SparseQuery, max_clause_count: int | None) -> int | None:
    """How many sparse terms may be sent: the smaller of ``query.max_clauses`` and the
    cluster's ``max_clause_count``, less what the BM25 part may use (None: no limit)."""
    limits = [n for n in (query.max_clauses, max_clause_count) if n is not None]
    if not limits:
        return None
    return max(1, min(limits) - text_clause_estimate(query))


def sent_terms(query: SparseQuery, max_clause_count: int | None) -> Terms:
    """The weighted terms a search actually sends (cut to the clause limit, no warning)."""
    limit = sparse_clause_limit(query, max_clause_count)
    terms = query.weighted_terms()
    return terms if limit is None else keep_top_terms(terms, limit)


def bool_should(clauses: list[dict[str, Any]]) -> dict[str, Any]:
    """``bool.should`` of ``clauses``; ``match_none`` when there are none (see MATCH_NONE)."""
    return {"bool": {"should": clauses}} if clauses else MATCH_NONE


def build_search_body(
    query: SparseQuery,
    k: int = 10,
    *,
    flavour: str = "opensearch",
    max_clause_count: int | None = DEFAULT_MAX_CLAUSE_COUNT,
) -> dict[str, Any]:
    """The ``_search`` body for ``query``; ``max_clause_count=None`` means no limit.

    The clause limit is the smaller of ``query.max_clauses`` and ``max_clause_count``
    (the cluster's value).
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    terms = searched_terms(query, sparse_clause_limit(query, max_clause_count))
    body: dict[str, Any] = {
        "size": k,
        "track_total_hits": count_terms(terms) > COMPLETE_SCORING_ABOVE,
        "_source": {"excludes": HIT_SOURCE_EXCLUDES},
    }
    if query.mode == "two-phase":
        high, low = split_by_weight(terms, query.prune_ratio)
        body["track_total_hits"] = count_terms(high) > COMPLETE_SCORING_ABOVE
        body["query"] = bool_should(sparse_clauses(high, flavour, query.mode))
        if count_terms(low):
            body["rescore"] = rescore(low, flavour, math.ceil(k * query.expansion_rate))
        return body
    clauses = sparse_clauses(terms, flavour, query.mode)
    if query.mode == "hybrid":
        clauses.append({"multi_match": {"query": query.text, "fields": list(query.text_fields),
                                        "boost": query.bm25_boost}})
    body["query"] = bool_should(clauses)
    if query.collapse:
        body["collapse"] = {"field": "doc_id"}
    return body


def rescore(low: Terms, flavour: str, window: int) -> dict[str, Any]:
    """Phase 2: add the low-weight terms' contributions to the top ``window`` hits."""
    return {
        "window_size": window,
        "query": {
            "rescore_query": bool_should(sparse_clauses(low, flavour, "default")),
            "query_weight": 1.0,
            "rescore_query_weight": 1.0,
            "score_mode": "total",
        },
    }

