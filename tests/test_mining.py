"""Distillation rows mined from parallel text with the real English SPLADE teacher."""

from __future__ import annotations

import random

import pytest

from milco_os.encoders import SparseEncoder
from milco_os.training.data import DistillationGroups, check_distillation_row
from milco_os.training.mining import mine_distillation_rows

PAIRS = [
    {"english": "The cat sleeps on the sofa.", "non_english": "Die Katze schläft auf dem Sofa."},
    {"english": "Stock markets fell sharply today.", "non_english": "Les bourses ont chuté."},
    {"english": "The cat sleeps on the sofa.", "non_english": "El gato duerme en el sofá."},
]
POOL = ["The cat sleeps on the bed.", "A dog barks at night.", "Markets fell after the news.",
        "Rain is expected tomorrow.", "The train leaves at noon."]


@pytest.fixture(scope="module")
def teacher(shared_dir) -> SparseEncoder:
    return SparseEncoder.from_pretrained(shared_dir / "models" / "splade-tiny", device="cpu")


def dot(teacher: SparseEncoder, query: str, doc: str) -> float:
    q = teacher.encode([query], kind="query")[0].pivot.to_dict()
    d = teacher.encode([doc], kind="document")[0].pivot.to_dict()
    return sum(w * d.get(t, 0.0) for t, w in q.items())


def test_rows_hold_the_translation_and_the_teachers_hardest_negatives(teacher) -> None:
    rows = mine_distillation_rows(PAIRS, teacher, n_negatives=3, pool=POOL)
    assert [r["query"] for r in rows] == [p["non_english"] for p in PAIRS]
    assert [r["pos"] for r in rows] == [[p["english"]] for p in PAIRS]
    for i, (pair, row) in enumerate(zip(PAIRS, rows, strict=True)):
        check_distillation_row(row, i)
        assert pair["english"] not in row["neg"] and len(set(row["neg"])) == 3
        assert row["neg_scores"] == sorted(row["neg_scores"], reverse=True)
        assert row["pos_scores"][0] == pytest.approx(dot(teacher, pair["english"],
                                                         pair["english"]), rel=1e-4)
        for doc, score in zip(row["neg"], row["neg_scores"], strict=True):
            assert score == pytest.approx(dot(teacher, pair["english"], doc), rel=1e-4,
                                          abs=1e-4)
    assert rows[0]["neg"][0] == "The cat sleeps on the bed."
    assert rows[1]["neg"][0] == "Markets fell after the news."
    assert rows[0]["neg"] == rows[2]["neg"]  # one English sentence, mined once
    group = DistillationGroups(rows, group_size=4)[0]
    assert group.docs[0] == PAIRS[0]["english"] and len(group.docs) == 4


def test_negatives_come_from_the_other_pairs_when_there_is_no_pool(teacher) -> None:
    rows = mine_distillation_rows(PAIRS, teacher, n_negatives=1)
    assert rows[0]["neg"] == ["Stock markets fell sharply today."]
    assert rows[1]["neg"] == ["The cat sleeps on the sofa."]


def test_a_pool_too_small_for_the_negatives_is_refused(teacher) -> None:
    with pytest.raises(ValueError, match="2 distinct English sentences cannot give 2"):
        mine_distillation_rows(PAIRS, teacher, n_negatives=2)


def test_many_rows_span_several_scoring_chunks(teacher, monkeypatch) -> None:
    import milco_os.training.mining as mining

    monkeypatch.setattr(mining, "CHUNK", 2)
    rng = random.Random(0)
    words = ["cat", "dog", "river", "market", "train", "rain", "city", "music"]
    english = [" ".join(rng.sample(words, 3)) for _ in range(9)]
    pairs = [{"english": e, "non_english": f"q{i}"} for i, e in enumerate(english)]
    chunked = mine_distillation_rows(pairs, teacher, n_negatives=2)
    monkeypatch.setattr(mining, "CHUNK", 1024)
    assert chunked == mine_distillation_rows(pairs, teacher, n_negatives=2)
