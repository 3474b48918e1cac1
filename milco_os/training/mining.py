"""Stage-2 distillation rows from parallel text, with negatives mined by the English teacher.

A parallel pair (``english``, ``non_english``) becomes a cross-lingual training query:
the non-English sentence is the query and its English translation the positive. The
negatives are the English sentences of the pool that the English SPLADE teacher scores
highest against that translation (never the translation itself), and every score is the
teacher's score of the translation against the document, so KL distillation learns the
teacher's English ranking for a query the teacher cannot read. The rows carry the stage-2
columns ``query``, ``pos``, ``pos_scores``, ``neg``, ``neg_scores``.

>>> from milco_os.encoders import SparseEncoder
>>> teacher = SparseEncoder.from_pretrained("../shared/models/splade-tiny")  # doctest: +SKIP
>>> pairs = [{"english": "The cat sleeps.", "non_english": "Die Katze schläft."}]
>>> rows = mine_distillation_rows(pairs, teacher, pool=["A dog runs."])  # doctest: +SKIP
>>> rows[0]["neg"]  # doctest: +SKIP
['A dog runs.']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from milco_os.encoders import SparseEncoder
from milco_os.training.data import Row
from milco_os.vectors.sparse import to_csr

CHUNK = 1024  # queries scored at once: a dense [CHUNK, pool] block of float32


def mine_distillation_rows(pairs: Sequence[Row], teacher: SparseEncoder, n_negatives: int = 7,
                           pool: Sequence[str] = (), progress: bool = False) -> list[Row]:
    """One distillation row per pair, negatives drawn from the pairs' English sides + ``pool``.

    Duplicate English sentences are one candidate; a pool with fewer than
    ``n_negatives + 1`` distinct sentences raises :class:`ValueError`.
    """
    targets = list(dict.fromkeys(p["english"] for p in pairs))
    candidates = list(dict.fromkeys([*targets, *pool]))
    if len(candidates) <= n_negatives:
        raise ValueError(f"{len(candidates)} distinct English sentences cannot give "
                         f"{n_negatives} negatives besides the positive")
    docs = teacher.encode(candidates, kind="document", progress=progress)
    queries = teacher.encode(targets, kind="query", progress=progress)
    width = len(teacher.pivot_vocab)
    d_matrix = to_csr(docs, "pivot", width).T.tocsr()
    q_matrix = to_csr(queries, "pivot", width)
    mined: dict[str, tuple[float, list[str], list[float]]] = {}
    for start in range(0, len(targets), CHUNK):
        scores = (q_matrix[start:start + CHUNK] @ d_matrix).toarray()
        for row, self_index in enumerate(range(start, min(start + CHUNK, len(targets)))):
            # targets are the first entries of candidates, in order: same index
            own = float(scores[row, self_index])
            scores[row, self_index] = -np.inf
            top = np.argpartition(-scores[row], n_negatives)[:n_negatives]
            top = top[np.argsort(-scores[row, top], kind="stable")]
            mined[targets[self_index]] = (own, [candidates[j] for j in top],
                                          [float(scores[row, j]) for j in top])
    rows = []
    for pair in pairs:
        own, negatives, negative_scores = mined[pair["english"]]
        rows.append({"query": pair["non_english"], "pos": [pair["english"]], "pos_scores": [own],
                     "neg": negatives, "neg_scores": negative_scores})
    return rows
