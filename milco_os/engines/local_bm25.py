"""BM25 for the local engine, as the clusters score a ``multi_match`` on ``title`` and ``text``.

The clusters analyse text with the standard analyzer: Unicode word boundaries,
lower case, one token per Chinese character or Hiragana, no stop words. :func:`tokens`
follows it; :class:`FieldIndex` scores one field with `bm25s <https://github.com/
xhluca/bm25s>`_ as Lucene's BM25 does, the default of OpenSearch 3 (``k1=1.2``,
``b=0.75``, idf ``ln(1 + (N - df + .5)/(df + .5))``); OpenSearch 2 and Elasticsearch
keep Lucene's legacy formula, whose scores are these times ``k1 + 1`` (the same
ranking; a hybrid query's ``bm25_boost`` absorbs the factor). A hit scores as its best
field (``multi_match``'s ``best_fields``). The indexes are built from the stored sources on
first use and rebuilt when the index's segments change: they are derived data, so a
crash can never leave them out of step with the documents.

>>> tokens("Der Hund schläft; 北京是首都 ひらがな 2024")
['der', 'hund', 'schläft', '北', '京', '是', '首', '都', 'ひ', 'ら', 'が', 'な', '2024']
>>> tokens("L'homme paid $1,000.50 in the U.S. today, a, b")
["l'homme", 'paid', '1,000.50', 'in', 'the', 'u.s', 'today', 'a', 'b']
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# One token per character: Han ideographs and Hiragana (UAX #29, as Lucene's standard
# tokenizer). Any other run of word characters is one token, joined across an apostrophe,
# a full stop, a colon or a middle dot between word characters ("l'homme", "u.s.a",
# UAX #29's MidLetter and MidNumLet) and across a comma or semicolon between digits
# ("1,000", MidNum).
_SINGLE = "\u3040-\u309f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = rf"(?:(?![{_SINGLE}])\w)+"
_TOKEN = re.compile(rf"[{_SINGLE}]|{_WORD}(?:(?:['\u2019.:\u00b7]|(?<=\d)[,;](?=\d)){_WORD})*")
K1, B = 1.2, 0.75


def tokens(text: str | None) -> list[str]:
    """The standard analyzer's tokens of ``text``, approximately (see the module doc)."""
    return _TOKEN.findall(text.lower()) if text else []


class FieldIndex:
    """BM25 over one text field of a fixed list of documents. As in Lucene, the document
    count and mean length are those of the documents that have the field."""

    def __init__(self, texts: Sequence[str | None]) -> None:
        import bm25s

        self.size = len(texts)
        self.rows = np.array([i for i, t in enumerate(texts) if t], dtype=np.int64)
        self.retriever = bm25s.BM25(method="lucene", k1=K1, b=B)
        if len(self.rows):
            self.retriever.index([tokens(texts[i]) for i in self.rows], show_progress=False)
        self.vocabulary = self.retriever.vocab_dict if len(self.rows) else {}

    def scores(self, text: str) -> np.ndarray:
        """BM25 of every document for the query ``text`` (float64; 0 where nothing matches)."""
        out = np.zeros(self.size)
        ids = [self.vocabulary[t] for t in tokens(text) if t in self.vocabulary]
        if ids:
            out[self.rows] = self.retriever.get_scores(ids)
        return out


def best_field_scores(fields: Sequence[FieldIndex], text: str) -> np.ndarray:
    """Per document, the score of its best field (``multi_match`` ``best_fields``)."""
    return np.max([field.scores(text) for field in fields], axis=0)
