"""SparseEncoder: vectors equal the model description, whatever the batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _model_helpers import ReferenceMilco, dense_view, make_tiny
from _shared import requires_shared, shared_path

from milco_os.encoders import SparseEncoder

TEXTS = [
    "the city the city the",  # repeated pieces: echo weights must be summed
    "Baltimore: the greatest city in America",
    "die Stadt",
    "",
    "la ville est la ville",
]
# bf16 keeps 8 significant bits: weights around 1 may move by a few 1e-2.
BF16_ATOL = 0.05


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    # an echo bias large enough that every position echoes (the duplicate check below
    # must not depend on what a random model happens to weigh)
    return make_tiny(tmp_path_factory.mktemp("tiny"), echo_bias=5.0)


@pytest.fixture(scope="module")
def encoder(folder) -> SparseEncoder:
    return SparseEncoder.from_pretrained(folder, device="cpu")


def test_vectors_equal_the_reference_math(encoder, folder):
    reference = ReferenceMilco(folder)
    vectors = encoder.encode(TEXTS, kind="document", batch_size=3)
    n_pivot, n_echo = encoder.model.config.en_vocab_size, encoder.model.config.m_vocab_size
    for text, vector in zip(TEXTS, vectors, strict=True):
        ids = encoder.tokenizer.encode(text).ids
        pivot, echo = reference.dense(ids)
        np.testing.assert_allclose(dense_view(vector.pivot, n_pivot), pivot, atol=1e-5)
        np.testing.assert_allclose(dense_view(vector.echo, n_echo), echo, atol=1e-5)
    repeated = encoder.tokenizer.encode(TEXTS[0]).ids
    assert len(set(repeated)) < len(repeated)
    assert len(vectors[0].echo) == len(set(repeated))


def test_special_tokens_are_kept_by_default_and_can_be_dropped(encoder):
    [kept] = encoder.encode([TEXTS[1]])
    [dropped] = encoder.encode([TEXTS[1]], keep_special_tokens=False)
    specials = encoder.echo_vocab.special_ids
    assert {"<s>", "</s>"} & set(kept.echo.terms)
    assert not set(dropped.echo.ids.tolist()) & specials
    special_terms = {encoder.echo_vocab.terms[i] for i in specials}
    assert set(dropped.echo.terms) == set(kept.echo.terms) - special_terms
    assert set(dropped.echo.terms)


def test_padding_is_ignored_and_order_kept(encoder):
    together = encoder.encode(TEXTS, batch_size=len(TEXTS))
    for text, vector in zip(TEXTS, together, strict=True):
        [alone] = encoder.encode([text])
        size = len(encoder.pivot_vocab.terms)
        np.testing.assert_allclose(dense_view(vector.pivot, size), dense_view(alone.pivot, size),
                                   atol=1e-5)
        assert alone.echo.to_dict().keys() == vector.echo.to_dict().keys()
        np.testing.assert_allclose(alone.echo.weights, vector.echo.weights, atol=1e-5)


def test_pivot_is_chunked_without_changing_results(encoder, monkeypatch):
    import milco_os.encoders.pytorch as module

    full = encoder.encode(TEXTS)
    monkeypatch.setattr(module, "PIVOT_CHUNK_ROWS", 1)
    chunked = encoder.encode(TEXTS)
    for a, b in zip(full, chunked, strict=True):
        assert a.pivot.to_dict() == pytest.approx(b.pivot.to_dict(), abs=1e-6)


def test_bf16_stays_close_to_fp32(folder, encoder):
    bf16 = SparseEncoder.from_pretrained(folder, device="cpu", dtype=torch.bfloat16)
    size = len(encoder.pivot_vocab.terms)
    for a, b in zip(encoder.encode(TEXTS), bf16.encode(TEXTS), strict=True):
        np.testing.assert_allclose(dense_view(a.pivot, size), dense_view(b.pivot, size),
                                   atol=BF16_ATOL)


def test_max_length_truncates_and_defaults_by_kind(encoder, folder):
    reference = ReferenceMilco(folder)
    text = " ".join(["city", "the"] * 150)
    full = encoder.tokenizer.encode(text).ids
    assert len(full) == 302
    size = encoder.model.config.m_vocab_size
    for kind, max_length, kept in (("query", None, 64), ("document", None, 302),
                                   ("document", 9, 9)):
        [vector] = encoder.encode([text], kind=kind, max_length=max_length)
        truncated = full[: kept - 1] + full[-1:]  # </s> stays last
        _, echo = reference.dense(truncated)
        np.testing.assert_allclose(dense_view(vector.echo, size), echo, atol=1e-5)


def test_bad_input_is_named(encoder):
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        encoder.encode(["ok", None])
    with pytest.raises(ValueError, match=r"texts\[1\]: lone surrogate U\+D800"):
        encoder.encode(["ok", "bad \ud800 text"])
    with pytest.raises(ValueError, match="kind"):
        encoder.encode(["ok"], kind="passage")


@requires_shared
def test_splade_tiny_finds_baltimore():
    encoder = SparseEncoder.from_pretrained(shared_path("models", "splade-tiny"), device="cpu")
    [vector] = encoder.encode(["Baltimore: The Greatest City in America"])
    assert "baltimore" in vector.pivot.terms[:5]
    assert len(vector.echo) == 0
