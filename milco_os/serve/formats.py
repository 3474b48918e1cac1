"""Encoded texts as each client reads them.

- ``milco`` (``/encode``'s default): per text, ``features``, ``{view: {name: weight}}``
  with the names as the index stores them (``.`` and ``%`` escaped: a document's
  ``pivot`` and ``echo`` fields, or the terms of a query), and ``terms``, the same
  weights under the tokenizer's own spelling, for people.
- ``ml-commons``: ``{"response": [{name: weight}, ...]}``, one map per text for one
  view: what an OpenSearch ML Commons remote model must return for ``neural_sparse``.
- ``elasticsearch``: ``{"sparse_embeddings": [{"embedding": [{"token", "weight"}]}]}``
  for one view: what the ``custom`` inference service's ``token_path`` and
  ``weight_path`` read.
- text-embeddings-inference (``/embed_sparse``): per text a list of
  ``{"index", "value"}`` over ONE index space: pivot term ids as they are, echo term
  ids shifted by the pivot vocabulary size (so a shared id never collides), sorted
  by index; ``"name"`` (``pivot.<name>``, the ``rank_feature`` field path) on request.

>>> from milco_os.vectors.sparse import SparseVector, SparseView
>>> v = SparseVector(SparseView.from_pairs([(7, "u.s", 2.0)]),
...                  SparseView.from_pairs([(3, "▁US", 1.0)]))
>>> item = milco_item(vector_features(v, ("pivot", "echo")), readable=True)
>>> item["features"], item["terms"]["pivot"]
({'pivot': {'u%2Es': 2.0}, 'echo': {'▁US': 1.0}}, {'u.s': 2.0})
>>> tei_values(v, ("pivot", "echo"), pivot_size=10, names=True)
[{'index': 7, 'value': 2.0, 'name': 'pivot.u%2Es'}, {'index': 13, 'value': 1.0, 'name': 'echo.▁US'}]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from milco_os.engines.terms import decoded, encode_term, engine_features
from milco_os.vectors.sparse import SparseVector

FORMATS = ("milco", "ml-commons", "elasticsearch")
ONE_VIEW_FORMATS = ("ml-commons", "elasticsearch")

Features = dict[str, dict[str, float]]  # view -> {engine feature name: weight}


def vector_features(vector: SparseVector, views: Sequence[str], record: str = "text"
                    ) -> Features:
    return {view: engine_features(vector.view(view), record=f"{record} {view}")
            for view in views}


def milco_item(features: Features, readable: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"features": features}
    if readable:
        item["terms"] = {view: decoded(names) for view, names in features.items()}
    return item


def encode_answer(fmt: str, features: list[Features], readable: bool,
                  meta: dict[str, Any]) -> dict[str, Any]:
    """The ``/encode`` body in format ``fmt`` (one-view formats take each text's only view)."""
    if fmt == "ml-commons":
        return {"response": [next(iter(f.values())) for f in features]}
    if fmt == "elasticsearch":
        return {"sparse_embeddings": [
            {"embedding": [{"token": t, "weight": w} for t, w in next(iter(f.values())).items()]}
            for f in features]}
    return {**meta, "vectors": [milco_item(f, readable) for f in features]}


def tei_values(vector: SparseVector, views: Sequence[str], pivot_size: int,
               names: bool) -> list[dict[str, Any]]:
    """One text as text-embeddings-inference's ``[{"index", "value"}]`` (see module doc)."""
    values = []
    for view in views:
        offset = pivot_size if view == "echo" else 0
        sparse = vector.view(view)
        for i, term, weight in zip(sparse.ids.tolist(), sparse.terms, sparse.weights.tolist(),
                                   strict=True):
            value: dict[str, Any] = {"index": i + offset, "value": weight}
            if names:
                value["name"] = f"{view}.{encode_term(term)}"
            values.append(value)
    return sorted(values, key=lambda value: value["index"])
