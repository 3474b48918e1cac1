"""Engine-safe feature names and values (milco_os.engines.terms, milco_os.pipeline.documents)."""

from __future__ import annotations

import doctest
import random

import numpy as np
import pytest

import milco_os.engines.terms
import milco_os.pipeline.documents
from milco_os.engines.terms import (
    FLOAT_MIN_NORMAL,
    FeatureValueError,
    convert_view,
    decode_term,
    decoded,
    encode_term,
    engine_features,
)
from milco_os.pipeline.documents import build_source
from milco_os.vectors.sparse import SparseVector, SparseView


def view(terms: list[str], weights: list[float]) -> SparseView:
    return SparseView(np.arange(len(terms)), np.array(weights, np.float32), tuple(terms))


@pytest.mark.parametrize("module", [milco_os.engines.terms, milco_os.pipeline.documents])
def test_doctests(module) -> None:
    assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("term", ["u.s.", ".", "...", "100%", "%2E", "%25.", "a%2Eb", "▁你好.", ""])
def test_escape_round_trips_and_removes_dots(term: str) -> None:
    name = encode_term(term)
    assert "." not in name
    assert decode_term(name) == term


def test_escape_is_injective_on_random_strings() -> None:
    rng = random.Random(0)
    strings = {"".join(rng.choice("a.%2E5") for _ in range(rng.randint(0, 8)))
               for _ in range(5000)}
    names = {encode_term(s) for s in strings}
    assert len(names) == len(strings)
    assert all(decode_term(encode_term(s)) == s for s in strings)


def test_plain_terms_are_unchanged() -> None:
    assert encode_term("##ing") == "##ing" and encode_term("▁dog") == "▁dog"


def test_duplicates_are_summed_after_escaping() -> None:
    features = engine_features(view(["a.b", "c", "a.b"], [1.0, 0.25, 2.0]))
    assert features == {"a%2Eb": 3.0, "c": 0.25}
    assert all(type(w) is float for w in features.values())


def test_non_positive_weights_are_dropped_and_counted() -> None:
    result = convert_view(view(["a", "b", "c"], [0.0, -1.0, 0.5]))
    assert result.features == {"c": 0.5} and result.dropped == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_raise_naming_record_and_term(bad: float) -> None:
    with pytest.raises(FeatureValueError, match=r"doc 7: term 'x\.y' has weight"):
        engine_features(view(["ok", "x.y"], [1.0, bad]), record="doc 7")


def test_tiny_weights_are_clamped_to_min_normal() -> None:
    assert engine_features(view(["a"], [1e-40])) == {"a": FLOAT_MIN_NORMAL}


def test_empty_term_is_an_error() -> None:
    with pytest.raises(FeatureValueError, match="empty term"):
        engine_features(view([""], [1.0]))


def test_decoded_undoes_escapes() -> None:
    assert decoded({"u%2Es": 1.0, "100%25": 2.0}) == {"u.s": 1.0, "100%": 2.0}


def test_build_source_fields_and_errors() -> None:
    vector = SparseVector(view(["x.y"], [1.0]), view(["▁x", "▁x"], [0.5, 0.5]))
    source = build_source("d1", 2, vector, text="body", extra={"url": "u"})
    assert source == {"doc_id": "d1", "passage": 2, "pivot": {"x%2Ey": 1.0},
                      "echo": {"▁x": 1.0}, "text": "body", "extra": {"url": "u"}}
    with pytest.raises(ValueError, match="passage"):
        build_source("d1", -1, vector)
    with pytest.raises(ValueError, match="doc_id"):
        build_source("", 0, vector)
    nan = SparseVector(SparseView.empty(), view(["▁z"], [float("nan")]))
    with pytest.raises(FeatureValueError, match="document 'd9' echo: term '▁z'"):
        build_source("d9", 0, nan)
