"""The BM25 baseline, searched on the text fields of the same index as the vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from milco_os.engines.base import Engine, EngineError, Hit
from milco_os.query import HIT_SOURCE_EXCLUDES

BM25_FIELDS = ("title", "text")


class BM25Searcher:
    """The BM25 baseline: a ``multi_match`` on the index's ``title`` and ``text`` fields.

    Needs a cluster engine (the local engine has no text index). ``collapse``: one
    hit per ``doc_id`` (its best passage), for indexes of split documents.
    """

    def __init__(self, engine: Engine, index: str, fields: Sequence[str] = BM25_FIELDS,
                 collapse: bool = False) -> None:
        if not hasattr(engine, "raw_search"):
            raise EngineError(f"BM25 needs OpenSearch or Elasticsearch; the {engine.name} "
                              "engine has no text index")
        self.engine, self.index, self.fields = engine, index, list(fields)
        self.collapse = collapse

    def body(self, text: str, k: int) -> dict[str, Any]:
        body = {"size": k, "track_total_hits": False,
                "_source": {"excludes": HIT_SOURCE_EXCLUDES},
                "query": {"multi_match": {"query": text, "fields": self.fields}}}
        if self.collapse:
            body["collapse"] = {"field": "doc_id"}
        return body

    def search(self, texts: Sequence[str], k: int = 10) -> list[list[Hit]]:
        return [self.engine.raw_search(self.index, self.body(t, k)) for t in texts]
