"""Engine documents: one passage of a corpus document with its sparse vector.

>>> import numpy as np
>>> from milco_os.vectors.sparse import SparseVector, SparseView
>>> v = SparseVector(SparseView.from_pairs([(1, "u.s", 1.25)]))
>>> build_source("d1", 0, v, title="T", lang="en")
{'doc_id': 'd1', 'passage': 0, 'pivot': {'u%2Es': 1.25}, 'echo': {}, 'title': 'T', 'lang': 'en'}
"""

from __future__ import annotations

from typing import Any

from milco_os.engines.terms import engine_features
from milco_os.vectors.sparse import VIEWS, SparseVector


def build_source(
    doc_id: str,
    passage: int,
    vector: SparseVector,
    title: str | None = None,
    text: str | None = None,
    lang: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``_source`` of one passage, with engine-safe ``pivot``/``echo`` features.

    Raises :class:`milco_os.engines.terms.FeatureValueError` naming the document and term
    when a weight is NaN or infinite.
    """
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError(f"doc_id must be a non-empty string, got {doc_id!r}")
    if not isinstance(passage, int) or passage < 0:
        raise ValueError(f"document {doc_id!r}: passage must be an int >= 0, got {passage!r}")
    source: dict[str, Any] = {"doc_id": doc_id, "passage": passage}
    for view in VIEWS:
        source[view] = engine_features(vector.view(view), record=f"document {doc_id!r} {view}")
    optional = {"title": title, "text": text, "lang": lang, "extra": extra}
    source.update({key: value for key, value in optional.items() if value is not None})
    return source
