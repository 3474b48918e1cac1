"""The held-out X->English sets of training/eval_xling.py: what is held out, what is
relevant, and that the exact scores are the views' dot products."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from milco_os.evaluation import evaluate, exact_run, exact_scores
from milco_os.training.data import read_ntrex, read_tatoeba
from milco_os.training.noise import noise_term
from milco_os.vectors.sparse import SparseVector, SparseView

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import eval_xling  # noqa: E402


def vector(pivot: dict[int, float], echo: dict[int, float]) -> SparseVector:
    return SparseVector(SparseView.from_pairs((i, f"p{i}", w) for i, w in pivot.items()),
                        SparseView.from_pairs((i, f"m{i}", w) for i, w in echo.items()))


def test_exact_scores_are_the_views_dot_products():
    queries = [vector({1: 2.0, 5: 1.0}, {7: 3.0}), vector({2: 1.0}, {})]
    docs = [vector({1: 0.5}, {7: 2.0}), vector({5: 4.0, 2: 1.0}, {8: 1.0})]
    np.testing.assert_allclose(exact_scores(queries, docs),
                               [[2.0 * 0.5 + 3.0 * 2.0, 1.0 * 4.0], [0.0, 1.0]])
    np.testing.assert_allclose(exact_scores(queries, docs, ["echo"]),
                               [[3.0 * 2.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(exact_scores(queries, docs, ["pivot"]),
                               [[2.0 * 0.5, 1.0 * 4.0], [0.0, 1.0]])
    run = exact_run(np.array([[0.0, 2.0], [1.0, 0.5]]), ["a", "b"], ["0", "1"])
    result = evaluate(run, {"a": "", "b": ""}, {"a": {"1": 1}, "b": {"1": 1}}, ["nDCG@10"])
    assert result.overall["nDCG@10"] == pytest.approx((1.0 + 1.0 / np.log2(3)) / 2)


def test_holdouts_come_from_the_shipped_training_config():
    holdout = eval_xling.Holdout.from_config(eval_xling.DEFAULT_CONFIG)
    assert (holdout.ntrex_documents, holdout.tatoeba_pairs) == (24, 200)
    # the config's paths, resolved beside the repository root (no file is opened here)
    assert holdout.ntrex.parts[-3:] == ("shared", "data", "ntrex128")
    assert holdout.tatoeba.parts[-3:] == ("shared", "data", "tatoeba")
    # beside the repository, resolved as the config resolves it (the folder may be a link)
    assert holdout.ntrex == REPO.parent.joinpath(*holdout.ntrex.parts[-3:]).resolve()


def test_ntrex_queries_are_the_held_out_articles_and_never_training_rows(shared_dir):
    holdout = eval_xling.Holdout.from_config(eval_xling.DEFAULT_CONFIG)
    data = eval_xling.ntrex_heldout(holdout, ["de", "zh"])
    docs = {d.id: d.text for d in data.corpus(None)()}
    assert len(docs) == 1997
    assert [sum(q.lang == lang for q in data.queries) for lang in ("de", "zh")] == [356, 356]
    trained = {row["non_english"] for row in read_ntrex(holdout.ntrex, ["deu"],
                                                        holdout_documents=24)}
    german = [q for q in data.queries if q.lang == "de"]
    assert not trained & {q.text for q in german}
    english, translated = eval_xling.ntrex_lines(holdout.ntrex, "deu")
    for query in german:
        (relevant,) = data.qrels[query.id]  # one relevant: the aligned line
        line = int(query.id.split("/")[1])
        assert translated[line] == query.text and docs[relevant] == english[line]


def test_tatoeba_corpus_is_the_union_of_held_out_english_and_duplicates_are_all_relevant(
        tmp_path: Path):
    (tmp_path / "tatoeba").mkdir()
    pairs = {"deu": [("Train me.", "Trainiere mich."), ("Tom is here.", "Tom ist hier."),
                     ("I see it.", "Ich sehe es.")],
             "fra": [("Train me too.", "Entraîne-moi aussi."), ("Tom is  here.", "Tom est là."),
                     ("i see it.", "Je le vois.")]}
    for code, rows in pairs.items():
        for side, i in (("eng", 0), (code, 1)):
            (tmp_path / "tatoeba" / f"tatoeba.{code}-eng.{side}").write_text(
                "".join(row[i] + "\n" for row in rows), encoding="utf-8")
    holdout = eval_xling.Holdout(tmp_path, 0, tmp_path / "tatoeba", 2)
    data = eval_xling.tatoeba_heldout(holdout, ["de", "fr"])
    docs = {d.id: d.text for d in data.corpus(None)()}
    # the training pairs stay out; identical sentences are one document
    assert sorted(docs.values()) == ["I see it.", "Tom is  here.", "Tom is here.", "i see it."]
    assert len(data.queries) == 4
    trained = {row["english"] for row in read_tatoeba(tmp_path / "tatoeba", ["deu", "fra"],
                                                       holdout=2)}
    assert trained == {"Train me.", "Train me too."} and not trained & set(docs.values())
    for query in data.queries:  # case and spacing variants of one sentence: all relevant
        assert {docs[d] for d in data.qrels[query.id]} in (
            {"Tom is here.", "Tom is  here."}, {"I see it.", "i see it."})


def test_engine_rows_on_the_local_engine_equal_the_exact_rows_and_add_bm25(tmp_path: Path):
    from _model_helpers import make_tiny

    from milco_os.encoders import SparseEncoder
    from milco_os.engines import open_engine

    (tmp_path / "tatoeba").mkdir()
    english = ["The cat sleeps on the sofa.", "Trains run late in winter.",
               "She reads a book about the sea.", "We cook rice for dinner."]
    for code, other in {"deu": ["Die Katze schläft auf dem Sofa.", "Züge fahren im Winter spät.",
                                "Sie liest ein Buch über das Meer.", "Wir kochen Reis."]}.items():
        for side, lines in (("eng", english), (code, other)):
            (tmp_path / "tatoeba" / f"tatoeba.{code}-eng.{side}").write_text(
                "".join(line + "\n" for line in lines), encoding="utf-8")
    data = eval_xling.tatoeba_heldout(eval_xling.Holdout(tmp_path, 0, tmp_path / "tatoeba", 4),
                                      ["de"])
    model = make_tiny(tmp_path / "tiny")
    encoder = SparseEncoder.from_pretrained(model, device="cpu")
    engine = open_engine(None, engine="local", local_path=str(tmp_path / "local"))
    rows = eval_xling.engine_rows("tiny", encoder, str(model), data, "xling-test", engine,
                                  ["pivot+echo"])
    exact = eval_xling.exact_rows("tiny", encoder, data)["tiny [pivot+echo]"]
    assert set(rows) == {"tiny [pivot+echo] (local engine)", "BM25 (local engine, same index)"}
    assert rows["tiny [pivot+echo] (local engine)"].overall["nDCG@10"] == pytest.approx(
        exact.overall["nDCG@10"], abs=1e-6)
    assert 0 < rows["BM25 (local engine, same index)"].overall["nDCG@10"] <= 1
    assert not engine.index_exists("xling-test")  # the run's index is removed


def test_exported_sets_load_as_beir_folders(shared_dir, tmp_path: Path):
    from milco_os.evaluation.datasets import load_dataset

    holdout = eval_xling.Holdout.from_config(eval_xling.DEFAULT_CONFIG)
    sets = {"tatoeba": eval_xling.tatoeba_heldout(holdout, ["th", "ja"])}
    eval_xling.export(tmp_path, sets)
    loaded = load_dataset(str(tmp_path / "tatoeba"))
    assert loaded.qrels == sets["tatoeba"].qrels
    assert [(q.id, q.text, q.lang) for q in loaded.queries] == \
        [(q.id, q.text, q.lang) for q in sets["tatoeba"].queries]
    assert len(loaded.queries) == 400


def test_bad_languages_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        eval_xling.main(["--langs", "de,xx", "--export", "/tmp/unused"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "eval_xling: --langs/--sets: unknown ['xx']; languages are zh, ar, hi, ru, th, de, "
        "es, ja, ko, fr, fa, tr, vi, sets ntrex, tatoeba, paragraphs"]


def test_paragraphs_are_consecutive_lines_of_one_article():
    ids = ["a", "a", "a", "a", "b", "b", "c"]
    assert eval_xling.paragraphs(ids) == [[0, 1, 2], [3], [4, 5], [6]]


def test_noise_terms_are_special_tokens_bare_pieces_and_punctuation():
    noisy = ["<s>", "</s>", "<pad>", "[CLS]", "[SEP]", "[unused12]", "▁", ".", "##,", "▁\"",
             "。", "'"]
    lexical = ["beijing", "##ing", "▁北京", "s", "u.s", "▁Moskau"]
    assert [t for t in noisy + lexical if noise_term(t)] == noisy


class FixedEncoder:
    """Encodes text ``t`` as the pivot terms ``vectors[t]`` (weights by position)."""

    def __init__(self, vectors: dict[str, list[int]]) -> None:
        self.vectors = vectors

    def encode(self, texts: list[str], kind: str) -> list[SparseVector]:
        return [vector({t: 30.0 - rank for rank, t in enumerate(self.vectors[text])}, {})
                for text in texts]


def test_alignment_overlap_counts_the_teachers_top_20_and_the_english_side_is_its_ceiling():
    import xling_diagnostics

    teacher = FixedEncoder({"a cat": list(range(25)), "a dog": list(range(100, 125))})
    # the student's top 20 of the German text holds 10 of the teacher's top 20 (and 3 of
    # its 21st-25th terms, which do not count); of the English text, 15
    student = FixedEncoder({"eine Katze": [*range(10), *range(20, 23), *range(200, 207)],
                            "a cat": [*range(15), *range(300, 305)],
                            "ein Hund": [], "a dog": list(range(100, 120))})
    pairs = {"de": [("eine Katze", "a cat"), ("ein Hund", "a dog")]}

    overlap = xling_diagnostics.alignment_overlap(student, teacher, pairs)
    ceiling = xling_diagnostics.english_side_overlap(student, teacher, ["a cat", "a dog"])

    assert overlap["de"] == pytest.approx((10 / 20 + 0) / 2)
    assert ceiling == pytest.approx((15 / 20 + 1) / 2)
