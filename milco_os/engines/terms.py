"""Feature names and values that a search engine accepts and scores exactly.

A ``rank_features`` / ``sparse_vector`` field stores ``{feature: weight}``. Two
engine rules would silently break MILCO scores, so every vector goes through
this module on its way to an engine:

- Names: a ``rank_feature`` query on ``pivot.a.b`` splits at the last dot and
  matches nothing (OpenSearch), and Elasticsearch rejects dotted names. Word
  pieces such as ``.`` or ``u.s`` are real terms, so names are percent-encoded:
  ``%`` -> ``%25`` and ``.`` -> ``%2E`` (reversible; :func:`decode_term` undoes it).
- Values: Lucene rejects the whole document for 0, negative, NaN or infinite
  values and for values below ``Float.MIN_NORMAL``; one feature twice is
  rejected too. Policy: weights <= 0 are dropped (and counted), NaN/inf raise
  :class:`FeatureValueError` naming the record and term, tiny positives are
  raised to ``Float.MIN_NORMAL``, and duplicates are SUMMED (the MILCO score
  sums the echo weights of repeated tokens).

>>> encode_term("u.s.")
'u%2Es%2E'
>>> decode_term(encode_term("100%."))
'100%.'
>>> from milco_os.vectors.sparse import SparseView
>>> engine_features(SparseView.from_pairs([(1, "a.b", 0.5), (2, "c", 1.0)]))
{'c': 1.0, 'a%2Eb': 0.5}
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from milco_os.core.errors import InputError
from milco_os.vectors.sparse import SparseView

FLOAT_MIN_NORMAL = 1.17549435e-38  # smallest value Lucene's FeatureField accepts
FLOAT32_MAX = float(np.finfo(np.float32).max)

_ESCAPES = {"%": "%25", ".": "%2E"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}
_ENCODE_RE = re.compile(r"[%.]")
_DECODE_RE = re.compile(r"%(?:25|2E)")


class FeatureValueError(InputError):
    """A weight no engine can store (NaN or infinite), or an empty term."""


def encode_term(term: str) -> str:
    """The engine-safe feature name of ``term`` (no dots, reversible)."""
    if "." not in term and "%" not in term:  # most terms: no work (this runs per feature)
        return term
    return _ENCODE_RE.sub(lambda m: _ESCAPES[m.group()], term)


def decode_term(name: str) -> str:
    """The original term of an engine feature name (inverse of :func:`encode_term`)."""
    return _DECODE_RE.sub(lambda m: _UNESCAPES[m.group()], name)


@dataclass(frozen=True)
class EngineFeatures:
    """Engine-safe ``{escaped term: weight}`` plus how many weights were dropped."""

    features: dict[str, float]
    dropped: int  # weights <= 0, which engines reject and which add nothing to a dot product


def convert_view(view: SparseView, *, record: str = "<vector>") -> EngineFeatures:
    """Escape, merge, check and clamp one view; ``record`` names it in errors."""
    merged: dict[str, float] = {}
    dropped = 0
    for term, weight in zip(view.terms, view.weights.tolist(), strict=True):
        if not math.isfinite(weight):
            raise FeatureValueError(f"{record}: term {term!r} has weight {weight}")
        if weight <= 0:
            dropped += 1
            continue
        if not term:
            raise FeatureValueError(f"{record}: empty term (weight {weight})")
        name = encode_term(term)
        merged[name] = merged.get(name, 0.0) + weight
    for name, weight in merged.items():
        if weight > FLOAT32_MAX:
            raise FeatureValueError(
                f"{record}: term {decode_term(name)!r} sums to {weight}, beyond float32"
            )
        merged[name] = max(float(weight), FLOAT_MIN_NORMAL)
    if len(merged) < len(view) - dropped:  # terms were merged: restore weight order
        merged = dict(sorted(merged.items(), key=lambda kv: -kv[1]))
    return EngineFeatures(merged, dropped)


def engine_features(view: SparseView, *, record: str = "<vector>") -> dict[str, float]:
    """``{escaped term: weight}`` ready for a ``rank_features`` field or a query.

    See :func:`convert_view` for the count of dropped non-positive weights.
    """
    return convert_view(view, record=record).features


def decoded(features: dict[str, float]) -> dict[str, float]:
    """``features`` with display names (escapes undone)."""
    return {decode_term(name): weight for name, weight in features.items()}
