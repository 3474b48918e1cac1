"""The engine interface: what ingestion and search need from a search backend.

Implementations: :mod:`milco_os.engines.opensearch`,
:mod:`milco_os.engines.elasticsearch` and :mod:`milco_os.engines.local` (an
exact on-disk index for machines without a cluster). Open one with
:func:`milco_os.engines.open_engine`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from milco_os.core.errors import EngineError, InvalidIndexNameError

if TYPE_CHECKING:
    from milco_os.engines.query import SparseQuery

MAX_ID_BYTES = 512  # OpenSearch and Elasticsearch refuse a longer _id (the whole bulk request)


@dataclass(frozen=True)
class Hit:
    """One search result: the engine ``_id``, its score, and its ``_source``
    (``doc_id``, ``passage``, ``title``, ``text``, ``lang``; no vectors)."""

    id: str
    score: float
    source: dict[str, Any]

    @property
    def doc_id(self) -> str:
        """The corpus's own document id (the engine id when the source has none)."""
        return str(self.source.get("doc_id", self.id))


def best_per_document(hits: Iterable[Hit]) -> Iterator[Hit]:
    """The first (best-ranked) hit of each ``doc_id``, in order."""
    seen: set[str] = set()
    for hit in hits:
        if hit.doc_id not in seen:
            seen.add(hit.doc_id)
            yield hit


@dataclass(frozen=True)
class BulkFailure:
    """A document the engine refused (status 429 means: retry it later)."""

    id: str
    status: int
    reason: str


class MissingAnalyzersWarning(UserWarning):
    """The cluster lacks the language analyzers: ``text`` is indexed with ``standard`` only."""


def id_problem(engine_id: str) -> str | None:
    """Why the engines would refuse ``engine_id`` as a document ``_id``, or None."""
    size = len(engine_id.encode("utf-8"))
    if size > MAX_ID_BYTES:
        return f"id is {size} bytes long; the engines accept at most {MAX_ID_BYTES}"
    return None


@dataclass(frozen=True)
class BulkDocument:
    """One document of a bulk request, with the bytes it adds to the request body."""

    id: str
    source: dict[str, Any]
    lines: bytes  # the action and source lines, UTF-8

    @classmethod
    def of(cls, index: str, doc_id: str, source: dict[str, Any]) -> BulkDocument:
        """Serialise once; ``ValueError`` when a value is NaN or infinite (not JSON)."""
        action = json.dumps({"index": {"_index": index, "_id": doc_id}}, ensure_ascii=False)
        line = json.dumps(source, ensure_ascii=False, allow_nan=False)
        return cls(doc_id, source, f"{action}\n{line}\n".encode())


_FORBIDDEN_IN_NAMES = '\\/*?"<>| ,#:'


def check_index_name(index: str) -> str:
    """``index`` if it names exactly one concrete index, else :class:`EngineError`.

    Wildcards, ``_all``, path pieces and commas would make a request reach
    other indexes (``DELETE /*`` deletes them all), so they are refused before
    any request is made; the rules are the engines' own for index names.
    """
    problem = None
    if not isinstance(index, str) or not index:
        problem = "it is empty"
    elif index in (".", ".."):
        problem = "'.' and '..' are not index names"
    elif index[0] in "_-+":
        problem = "it must not start with '_', '-' or '+'"
    elif index != index.lower():
        problem = "it must be lower case"
    elif bad := sorted({c for c in index if c in _FORBIDDEN_IN_NAMES}):
        problem = f"it must not contain {' '.join(map(repr, bad))}"
    elif len(index.encode()) > 255:
        problem = "it is longer than 255 bytes"
    if problem:
        raise InvalidIndexNameError(f"invalid index name {index!r}: {problem}")
    return index


TEXT_FIELDS = ("title", "text")  # the text fields BM25 searches by default


class Engine(ABC):
    """A search backend holding MILCO indexes."""

    name: str  # "opensearch" | "elasticsearch" | "local"
    flavour: str | None = None  # the query DSL of search_body (None: the engine has none)
    max_clause_count: int | None = None  # terms a query may send (None: no limit)

    @abstractmethod
    def create_index(
        self,
        index: str,
        *,
        meta: dict[str, Any],
        shards: int = 1,
        replicas: int = 0,
        refresh_interval: str | None = None,
        exist_ok: bool = False,
    ) -> None:
        """Create ``index`` with the MILCO mapping and ``_meta`` (model, views, pruning)."""

    @abstractmethod
    def delete_index(self, index: str, *, missing_ok: bool = True) -> None: ...

    @abstractmethod
    def index_info(self, index: str) -> dict[str, Any]:
        """``{"index", "meta", "docs", "store_bytes", "settings"}``."""

    @abstractmethod
    def index_exists(self, index: str) -> bool: ...

    @abstractmethod
    def bulk_index(
        self, index: str, docs: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[BulkFailure]:
        """Index ``(_id, source)`` pairs in one request; returns the per-document failures.

        Raises :class:`TransientEngineError` when the whole request must be retried.
        """

    def bulk_send(self, index: str, documents: Sequence[BulkDocument]) -> list[BulkFailure]:
        """:meth:`bulk_index` for documents already serialised (a cluster sends their
        bytes as they are; other engines take their sources)."""
        return self.bulk_index(index, [(d.id, d.source) for d in documents])

    @abstractmethod
    def existing_ids(self, index: str, ids: Sequence[str]) -> set[str]: ...

    @abstractmethod
    def refresh(self, index: str) -> None: ...

    @abstractmethod
    def count(self, index: str) -> int: ...

    @abstractmethod
    def search(self, index: str, query: SparseQuery, k: int = 10) -> list[Hit]: ...

    @abstractmethod
    def bm25_search(self, index: str, text: str, k: int = 10,
                    fields: Sequence[str] = TEXT_FIELDS, collapse: bool = False) -> list[Hit]:
        """BM25 on the text ``fields``, a hit scoring as its best field (a ``multi_match``);
        ``collapse``: one hit per ``doc_id``, its best passage."""

    @abstractmethod
    def sample_sources(self, index: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """Up to ``n`` documents' sources (vectors included), drawn at random from ``seed``."""

    def search_body(self, query: SparseQuery, k: int = 10) -> dict[str, Any]:
        """The query DSL body :meth:`search` sends (engines with a :attr:`flavour`)."""
        raise EngineError(f"the {self.name} engine has no query DSL; build a body for a "
                          "cluster with milco_os.engines.query.build_search_body")

    @abstractmethod
    def get_sources(self, index: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The full ``_source`` (vectors included) of each id that exists."""

    @abstractmethod
    def set_refresh_interval(self, index: str, interval: str | None) -> None:
        """Set the index's ``refresh_interval`` (None: the engine default)."""

    @abstractmethod
    def update_meta(self, index: str, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the index ``_meta`` (the other keys stay)."""

    @property
    def address(self) -> str:
        """Where the indexes live, for messages (credentials never shown)."""
        return self.name

    def health(self) -> str:
        """``green``, ``yellow`` or ``red`` (an embedded engine is always green)."""
        return "green"

    def meta(self, index: str) -> dict[str, Any]:
        """The index ``_meta``: model, views, pruning, milco-os version."""
        return self.index_info(index)["meta"]
