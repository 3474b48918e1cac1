"""Exact in-memory retrieval over encoded vectors: the scores the model defines, with no
engine in between (no weight quantisation, no clause limits).

>>> from milco_os.vectors.sparse import SparseVector, SparseView
>>> def vec(pivot):
...     return SparseVector(SparseView.from_pairs((i, f"t{i}", w) for i, w in pivot.items()))
>>> exact_run(exact_scores([vec({1: 2.0})], [vec({1: 1.0}), vec({1: 3.0, 2: 1.0})]),
...           ["q"], ["a", "b"])
{'q': {'b': 6.0, 'a': 2.0}}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from milco_os.evaluation.retrieval import Run
from milco_os.vectors.sparse import SparseVector, to_csr

ALL_VIEWS = ("pivot", "echo")


def exact_scores(queries: Sequence[SparseVector], docs: Sequence[SparseVector],
                 views: Sequence[str] = ALL_VIEWS) -> np.ndarray:
    """[Q, D] scores in float64: the sum over ``views`` of query . document."""
    scores = np.zeros((len(queries), len(docs)))
    everything = [*queries, *docs]
    for view in views:
        width = 1 + max((int(v.view(view).ids.max()) for v in everything if len(v.view(view))),
                        default=0)
        scores += (to_csr(queries, view, width, np.float64)
                   @ to_csr(docs, view, width, np.float64).T).toarray()
    return scores


def exact_run(scores: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str],
              k: int = 100) -> Run:
    """The top ``k`` documents of every query (ties by corpus order); zero scores are
    dropped, since an engine returns no document that shares no term with the query."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i] if scores[i, j] > 0}
            for i, qid in enumerate(query_ids)}
