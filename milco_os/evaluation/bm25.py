"""The BM25 baseline, searched on the text fields of the same index as the vectors."""

from __future__ import annotations

from collections.abc import Sequence

from milco_os.engines.base import TEXT_FIELDS, Engine, Hit

BM25_FIELDS = TEXT_FIELDS


class BM25Searcher:
    """The BM25 baseline: :meth:`Engine.bm25_search` on the index's ``title`` and ``text``
    (a cluster's ``multi_match``; the local engine's own BM25). ``collapse``: one hit per
    ``doc_id`` (its best passage), for indexes of split documents.
    """

    def __init__(self, engine: Engine, index: str, fields: Sequence[str] = BM25_FIELDS,
                 collapse: bool = False) -> None:
        self.engine, self.index, self.fields = engine, index, list(fields)
        self.collapse = collapse

    def search(self, texts: Sequence[str], k: int = 10) -> list[list[Hit]]:
        return [self.engine.bm25_search(self.index, t, k, self.fields, self.collapse)
                for t in texts]
