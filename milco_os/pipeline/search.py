"""Search a MILCO index with text, and explain why a hit matched.

:class:`Searcher` ties an engine, an index and a query encoder together:
texts are encoded as queries (optionally pruned), turned into
:class:`~milco_os.engines.query.SparseQuery` objects and searched. Hits carry the
corpus's own ids (``hit.doc_id``). :meth:`Searcher.explain` recomputes a hit's
score term by term from the document vectors stored in the index, so the
shared terms behind a cross-lingual match (a Chinese query, an English
document) can be read off directly.

>>> import tempfile
>>> from milco_os.engines.local import LocalEngine
>>> from milco_os.vectors.sparse import SparseVector, SparseView
>>> engine = LocalEngine(tempfile.mkdtemp())
>>> engine.create_index("news", meta={"model": "m", "views": ["pivot"], "pruning": "none"})
>>> _ = engine.bulk_index("news", [("d1#0", {"doc_id": "d1", "passage": 0,
...                                          "pivot": {"dog": 2.0, "park": 1.0}})])
>>> class Encoder:  # stands in for milco_os.encoders.SparseEncoder
...     def encode(self, texts, kind="query"):
...         return [SparseVector(SparseView.from_pairs([(1, "dog", 0.5)])) for _ in texts]
>>> searcher = Searcher(engine, "news", Encoder())
>>> [[hit.doc_id for hit in hits] for hits in searcher.search(["狗"])]
[['d1']]
>>> print(searcher.explain(searcher.search(["狗"])[0][0], Encoder().encode(["狗"])[0]).format())
d1#0 (doc d1): score 1 = sum of 1 shared terms (exact 1)
  pivot  dog                           0.5 x 2 = 1
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from milco_os.core.errors import InputError
from milco_os.engines.base import Engine, Hit, best_per_document
from milco_os.engines.query import (
    TWO_PHASE_EXPANSION_RATE,
    TWO_PHASE_PRUNE_RATIO,
    SparseQuery,
    Terms,
    sent_terms,
)
from milco_os.engines.terms import decode_term
from milco_os.vectors.sparse import SparseVector

FEATURE_PRECISION = 2.0**-8  # Lucene keeps 9 significant bits of each document weight


class QueryEncoder(Protocol):
    """What :class:`Searcher` needs from a model (``milco_os.encoders.SparseEncoder``)."""

    def encode(self, texts: Sequence[str], kind: str = "query") -> list[SparseVector]: ...


@dataclass(frozen=True)
class SearchOptions:
    """How queries are built; see :class:`~milco_os.engines.query.SparseQuery` for each option."""

    alpha: float | None = None
    mode: str = "default"
    collapse: bool = False
    prune: Callable[[SparseVector], SparseVector] | None = None  # query-side pruning
    prune_ratio: float = TWO_PHASE_PRUNE_RATIO
    expansion_rate: float = TWO_PHASE_EXPANSION_RATE
    max_clauses: int | None = None
    text_fields: tuple[str, ...] = ("title", "text")  # hybrid's BM25 fields, e.g. "text.en"

    def query(self, vector: SparseVector, text: str | None = None) -> SparseQuery:
        """The engine query for an encoded text (pruned here, so pass the raw vector).

        Engines cannot collapse a rescored search: in two-phase mode
        :class:`Searcher` collapses the rescored hits itself.
        """
        return SparseQuery(
            self.prune(vector) if self.prune else vector, alpha=self.alpha, mode=self.mode,
            text=text, collapse=self.collapse and self.mode != "two-phase",
            prune_ratio=self.prune_ratio, expansion_rate=self.expansion_rate,
            max_clauses=self.max_clauses, text_fields=self.text_fields,
        )


@dataclass(frozen=True)
class Contribution:
    """One shared term: query weight (view scale applied) x document weight."""

    view: str
    term: str  # decoded, as the tokenizer wrote it
    query_weight: float
    doc_weight: float

    @property
    def value(self) -> float:
        return self.query_weight * self.doc_weight


@dataclass(frozen=True)
class Explanation:
    """Why ``hit`` matched: its score split over the shared terms, largest first."""

    hit: Hit
    contributions: list[Contribution] = field(default_factory=list)

    @property
    def exact_score(self) -> float:
        """The sum of the contributions (the dot product in full precision)."""
        return sum(c.value for c in self.contributions)

    def agrees(self, tolerance: float = FEATURE_PRECISION + 1e-6) -> bool:
        """Whether the engine score equals the exact score up to Lucene's 9-bit storage
        (each stored weight loses less than 2^-8 of itself; scores are float32)."""
        exact = self.exact_score
        return abs(self.hit.score - exact) <= tolerance * max(abs(exact), 1e-30)

    def format(self, top: int | None = None) -> str:
        lines = [
            f"{self.hit.id} (doc {self.hit.doc_id}): score {self.hit.score:.6g} = sum of "
            f"{len(self.contributions)} shared terms (exact {self.exact_score:.6g})"
        ]
        for c in self.contributions[:top]:
            lines.append(f"  {c.view:<6} {c.term:<24} {c.query_weight:8.4g} x "
                         f"{c.doc_weight:.4g} = {c.value:.4g}")
        return "\n".join(lines)


class Searcher:
    """Text in, ranked corpus documents out (see the module docstring)."""

    def __init__(self, engine: Engine, index: str, encoder: QueryEncoder,
                 options: SearchOptions | None = None) -> None:
        self.engine = engine
        self.index = index
        self.encoder = encoder
        self.options = options or SearchOptions()

    def encode(self, texts: Sequence[str]) -> list[SparseVector]:
        """Query vectors for ``texts`` (unpruned: :meth:`SearchOptions.query` prunes).

        An empty query is an error: its vector holds only the special tokens' terms,
        whose hits would mean nothing.
        """
        for number, text in enumerate(texts, 1):
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"query {number}: empty query {text!r}; give at least one word")
        return self.encoder.encode(list(texts), kind="query")

    def search(self, texts: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The top ``k`` hits of each text (``hit.doc_id`` is the corpus id)."""
        return [self.search_vector(v, t, k)
                for v, t in zip(self.encode(texts), texts, strict=True)]

    def search_vector(self, vector: SparseVector, text: str | None = None,
                      k: int = 10) -> list[Hit]:
        """The top ``k`` hits of one encoded query (``text`` feeds hybrid mode's BM25)."""
        query = self.options.query(vector, text)
        if not (self.options.collapse and query.mode == "two-phase"):
            return self.engine.search(self.index, query, k)
        window = math.ceil(k * query.expansion_rate)  # the rescored, exactly scored hits
        hits = best_per_document(self.engine.search(self.index, query, window))
        return list(itertools.islice(hits, k))

    def explain(self, hit: Hit, query_vector: SparseVector, text: str | None = None) -> Explanation:
        """``hit``'s sparse score term by term, from the document vectors stored in the index.

        Uses the terms the search sent (same view weights, same clause limit;
        ``text`` is the query text, needed in ``hybrid`` mode, whose BM25 part is
        not included). With ``mode="two-phase"`` a hit outside the rescore window
        scored only the high-weight terms, so its engine score is below the exact one.
        """
        return self.explain_all([hit], query_vector, text)[0]

    def explain_all(self, hits: Sequence[Hit], query_vector: SparseVector,
                    text: str | None = None) -> list[Explanation]:
        """:meth:`explain` for the hits of one query, fetching their vectors at once."""
        sources = self.engine.get_sources(self.index, [hit.id for hit in hits])
        missing = [hit.id for hit in hits if hit.id not in sources]
        if missing:
            raise LookupError(f"documents {missing} are no longer in index {self.index!r}")
        terms = sent_terms(self.options.query(query_vector, text), self.engine.max_clause_count)
        return [Explanation(hit, _contributions(terms, sources[hit.id])) for hit in hits]


def _contributions(terms: Terms, source: dict[str, Any]) -> list[Contribution]:
    """The shared terms of a query and a stored document, largest product first."""
    found = [
        Contribution(view, decode_term(t), w, float(source[view][t]))
        for view, ts in terms.items()
        for t, w in ts.items()
        if t in source.get(view, {})
    ]
    return sorted(found, key=lambda c: -c.value)
