"""Training data: sources, held-out lines, distillation groups, batching, collators, config."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from milco_os.training.config import ConfigError, TrainConfig
from milco_os.training.data import (
    DistillationGroups,
    GroupCollator,
    LengthGroupedBatches,
    ParallelCollator,
    TrainingDataError,
    load_parallel_source,
    load_parallel_sources,
    load_rows,
    ntrex_languages,
    read_cldr,
    read_dictionary,
    read_emoji_annotations,
    read_gettext,
    read_ntrex,
    read_tatoeba,
    sample_group,
)

PAIRS = [{"english": f"the house {i}", "non_english": f"das Haus {i}"} for i in range(5)]


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet"])
def test_local_parallel_files_load_in_every_format(tmp_path, suffix) -> None:
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".jsonl":
        write_lines(path, [json.dumps(r) for r in PAIRS])
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(PAIRS), path)
    else:
        sep = "," if suffix == ".csv" else "\t"
        write_lines(path, [f"english{sep}non_english"]
                    + [f"{r['english']}{sep}{r['non_english']}" for r in PAIRS])
    rows = load_parallel_source({"kind": "rows", "path": str(path)})
    assert [dict(r) for r in rows] == PAIRS


def test_missing_column_and_unreachable_hub_id_are_clear_errors(tmp_path, monkeypatch) -> None:
    path = tmp_path / "bad.jsonl"
    write_lines(path, [json.dumps({"english": "a", "other": "b"})])
    with pytest.raises(TrainingDataError, match=r"missing column\(s\) \['non_english'\]"):
        load_rows(str(path), ["english", "non_english"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(TrainingDataError, match="neither a local path nor a reachable hub"):
        load_rows("no-such-owner/no-such-parallel-set", ["english"])


def test_tatoeba_and_ntrex_readers_align_lines_and_hold_out_the_tail(tmp_path) -> None:
    write_lines(tmp_path / "tatoeba.deu-eng.deu", ["Hallo", "Danke"])
    write_lines(tmp_path / "tatoeba.deu-eng.eng", ["Hello", "Thanks"])
    assert read_tatoeba(tmp_path) == [{"english": "Hello", "non_english": "Hallo"},
                                      {"english": "Thanks", "non_english": "Danke"}]
    english = [f"line {i}" for i in range(10)]
    write_lines(tmp_path / "newstest2019-src.eng.txt", english)
    write_lines(tmp_path / "newstest2019-ref.deu.txt", [f"Zeile {i}" for i in range(10)])
    write_lines(tmp_path / "newstest2019-ref.spa.txt", [f"linea {i}" for i in range(10)])
    assert ntrex_languages(tmp_path) == ["deu", "spa"]
    rows = read_ntrex(tmp_path, holdout=3)
    assert len(rows) == 14 and rows[6] == {"english": "line 6", "non_english": "Zeile 6"}
    assert not any(r["english"] in {"line 7", "line 8", "line 9"} for r in rows)
    write_lines(tmp_path / "newstest2019-ref.fra.txt", ["une ligne"])
    with pytest.raises(TrainingDataError, match="1 lines vs 10 English"):
        read_ntrex(tmp_path, ["fra"])


def write_catalogue(folder: Path, messages: dict[str, str]) -> None:
    from babel.messages.catalog import Catalog
    from babel.messages.mofile import write_mo

    catalogue = Catalog(locale="de")
    for english, translated in messages.items():
        context, _, msgid = english.rpartition("|")
        catalogue.add(msgid, translated, context=context or None)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "ui.mo").open("wb") as handle:
        write_mo(handle, catalogue)


def test_gettext_catalogues_give_clean_pairs_once_per_language(tmp_path) -> None:
    write_catalogue(tmp_path / "de" / "LC_MESSAGES", {
        "menu|_Save As": "Speichern _unter", "~Insert Table...": "Tabelle ~einfügen...",
        "button|_Save As": "Speichern unter",  # the same English text in another context
        "%1 rows": "%1 Zeilen", "Zoom": "Zoom", "OK": "", "42": "42 ",
        "Opens the dialog.": "Öffnet den Dialog."})
    rows = read_gettext(tmp_path, ["de"])
    assert sorted((r["english"], r["non_english"]) for r in rows) == [
        ("Insert Table", "Tabelle einfügen"), ("Opens the dialog.", "Öffnet den Dialog."),
        ("Save As", "Speichern unter")]
    assert len(read_gettext(tmp_path, ["de"], max_pairs=2, seed=1)) == 2
    with pytest.raises(TrainingDataError, match="fr/LC_MESSAGES: no .mo catalogue"):
        load_parallel_source({"kind": "gettext", "path": str(tmp_path), "languages": ["fr"]})


def test_dictionaries_give_clean_word_pairs_common_first(tmp_path) -> None:
    cedict = tmp_path / "cc-cedict.txt"
    cedict.write_text("# CC-CEDICT\n"
                      "北京 北京 [Bei3 jing1] /Beijing municipality, capital of China/\n"
                      "張 张 [Zhang1] /surname Zhang/\n"
                      "喫 吃 [chi1] /variant of 吃[chi1]/\n"
                      "吃 吃 [chi1] /to eat; to consume/\n"
                      "首都 首都 [shou3 du1] /capital (city)/CL:個|个[ge4]/\n"
                      "3C 3C [san1 C] /computers, communications/\n"
                      "美國 美国 [Mei3 guo2] /USA/\n", encoding="utf-8")
    rows = read_dictionary(cedict, "zh")
    assert {r["non_english"]: r["english"] for r in rows} == {
        "北京": "Beijing", "吃": "eat", "首都": "capital"}
    assert len(read_dictionary(cedict, "zh", max_pairs=2)) == 2

    import gzip
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    entries = ["Hund /hʊnt/ <masc, n>\ndog <n>, hound <n>\n",
               "Hund /hʊnt/ <masc, n>\n [min.] mine car <n>\n",
               "Köter /kø:tɐ/\n1. dog\n2. cur\n",
               "Haus /haʊs/\nhouse <n>\n   Synonym: {Gebäude}\n",
               "Auto\nPKW <n> [Br.]\n"]
    index, body = [], b""
    for entry in entries:
        data = entry.encode()
        index.append(f"{entry.split()[0].casefold()}\t{alphabet[len(body) // 64]}"
                     f"{alphabet[len(body) % 64]}\t{alphabet[len(data)]}")
        body += data
    (tmp_path / "freedict-deu-eng.index").write_text("\n".join(index) + "\n", encoding="utf-8")
    with gzip.open(tmp_path / "freedict-deu-eng.dict.dz", "wb") as handle:
        handle.write(body)
    rows = load_parallel_source({"kind": "dictionary", "path": str(tmp_path),
                                 "languages": ["de"]})
    assert {r["non_english"]: r["english"] for r in rows} == {
        "Hund": "dog", "Köter": "dog", "Haus": "house"}
    assert rows[0]["non_english"] == "Hund"  # most senses first
    with pytest.raises(TrainingDataError, match="no dictionary for language 'fr'"):
        load_parallel_source({"kind": "dictionary", "path": str(tmp_path), "languages": ["fr"]})


def test_cldr_names_pair_english_with_each_locale() -> None:
    rows = load_parallel_source({"kind": "cldr", "languages": ["ru", "zh_Hans"]})
    pairs = {(r["english"], r["non_english"]) for r in rows}
    assert {("China", "Китай"), ("Moscow", "Москва"), ("Russian", "русский"),
            ("China", "中国"), ("January", "一月")} <= pairs
    assert all(r["english"] != r["non_english"] for r in rows)
    with pytest.raises(TrainingDataError, match="unknown locale 'xx_Nope'"):
        read_cldr(["xx_Nope"])


def write_annotations(folder: Path, locale: str, entries: dict[str, tuple[list[str], str]]
                      ) -> None:
    (folder / locale).mkdir(parents=True)
    annotations = {emoji: {"default": keywords, "tts": [name]}
                   for emoji, (keywords, name) in entries.items()}
    (folder / locale / "annotations.json").write_text(json.dumps(
        {"annotations": {"identity": {"language": locale}, "annotations": annotations}}),
        encoding="utf-8")


def test_emoji_annotations_pair_names_and_keywords_by_emoji(tmp_path) -> None:
    write_annotations(tmp_path, "en", {"🐱": (["cat", "face", "pet"], "cat face"),
                                       "🔥": (["fire", "flame"], "fire"),
                                       "💤": (["zzz"], "zzz")})
    write_annotations(tmp_path, "tr", {"🔥": (["alev", "ateş"], "ateş"),
                                       "🐱": (["kedi", "yüz"], "kedi yüzü"),
                                       "💤": (["zzz"], "uyku"),
                                       "🆕": (["yeni"], "yeni")})
    rows = load_parallel_source({"kind": "emoji", "path": str(tmp_path), "languages": ["tr"]})
    assert {(r["english"], r["non_english"]) for r in rows} == {
        ("cat face", "kedi yüzü"), ("cat, face, pet", "kedi, yüz"),
        ("fire", "ateş"), ("fire, flame", "alev, ateş"), ("zzz", "uyku")}
    assert len(read_emoji_annotations(tmp_path, ["tr"], max_pairs=2, seed=1)) == 2
    with pytest.raises(TrainingDataError, match="no CLDR emoji annotations for locale 'de'"):
        read_emoji_annotations(tmp_path, ["de"])


def test_a_held_out_text_never_enters_training_through_another_source(tmp_path) -> None:
    write_lines(tmp_path / "tatoeba.deu-eng.deu", ["Hallo", "Danke", "Ja"])
    write_lines(tmp_path / "tatoeba.deu-eng.eng", ["Hello", "Thanks", "Yes"])
    extra = tmp_path / "extra.jsonl"
    write_lines(extra, [json.dumps(r) for r in [
        {"english": "yes ", "non_english": "jawohl"},  # held-out English, other spelling
        {"english": "Indeed", "non_english": "Ja"},  # held-out German
        {"english": "Hello", "non_english": "Servus"}]])  # a training text: kept
    rows, left_out = load_parallel_sources([
        {"kind": "tatoeba", "path": str(tmp_path), "holdout": 1},
        {"kind": "rows", "path": str(extra)}])
    assert left_out == 2
    assert [r["non_english"] for r in rows] == ["Hallo", "Danke", "Servus"]


@pytest.mark.shared
def test_real_ntrex_holds_out_the_last_200_lines(shared_dir) -> None:
    ntrex = shared_dir / "data" / "ntrex128"
    rows = read_ntrex(ntrex, ["deu"], holdout=200)
    english = (ntrex / "newstest2019-src.eng.txt").read_text(encoding="utf-8").splitlines()
    assert len(english) == 1997 and len(rows) <= 1797
    held = set(english[-200:]) - set(english[:-200])
    assert held and not held & {r["english"] for r in rows}


def test_sample_group_puts_one_positive_first_and_distinct_negatives() -> None:
    row = {"query": "q", "pos": ["p0", "p1"], "pos_scores": [9.0, 8.0],
           "neg": [f"n{i}" for i in range(10)], "neg_scores": [float(i) for i in range(10)]}
    group = sample_group(row, 0, 8, random.Random(0))
    assert group.docs[0] in {"p0", "p1"} and len(group.docs) == 8
    assert len(set(group.docs[1:])) == 7 and all(d.startswith("n") for d in group.docs[1:])
    for doc, score in zip(group.docs, group.teacher_scores, strict=True):
        source = "pos" if doc.startswith("p") else "neg"
        assert row[f"{source}_scores"][row[source].index(doc)] == score
    few = {**row, "neg": ["n0", "n1"], "neg_scores": [0.0, 1.0]}
    assert len(sample_group(few, 0, 8, random.Random(0)).docs) == 8  # with replacement


@pytest.mark.parametrize(("change", "message"), [
    ({"pos_scores": [1.0, 2.0]}, "record 3: field 'pos_scores' has 2 scores for 1 'pos'"),
    ({"neg": None}, "record 3: field 'neg' is missing"),
    ({"pos": [], "pos_scores": []}, "record 3: field 'pos' is empty"),
    ({"query": ""}, "record 3: field 'query' must be text"),
])
def test_bad_distillation_records_name_the_record_and_field(change, message) -> None:
    row = {"query": "q", "pos": ["p"], "pos_scores": [1.0], "neg": ["n"], "neg_scores": [0.0],
           **change}
    with pytest.raises(TrainingDataError, match=message.replace("(", r"\(")):
        sample_group(row, 3, 2, random.Random(0))


def test_distillation_groups_resample_per_epoch_reproducibly() -> None:
    rows = [{"query": "q", "pos": ["p"], "pos_scores": [1.0],
             "neg": [f"n{i}" for i in range(20)], "neg_scores": [0.0] * 20}]
    groups = DistillationGroups(rows, group_size=4, seed=1)
    first = groups[0]
    assert DistillationGroups(rows, group_size=4, seed=1)[0] == first
    groups.set_epoch(1)
    assert groups[0] != first


def test_length_grouped_batches_cover_every_index_once_and_repeat_per_epoch() -> None:
    lengths = [random.Random(i).randrange(1, 100) for i in range(103)]
    batches = LengthGroupedBatches(lengths, batch_size=8, seed=3, mega_factor=4)
    epoch0 = batches.epoch(0)
    assert sorted(i for b in epoch0 for i in b) == list(range(103))
    assert sum(len(b) < 8 for b in epoch0) == 1
    assert epoch0 == batches.epoch(0) and epoch0 != batches.epoch(1)
    for batch in epoch0:  # sorted by length inside each batch (longest first)
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *words])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


def test_collators_pad_each_batch_to_its_longest_text() -> None:
    tok = word_tokenizer(["the", "house", "das", "haus", "a", "b", "c"])
    batch = ParallelCollator(tok, tok, max_length=16)(
        [{"english": "the house", "non_english": "das haus a b c"},
         {"english": "the", "non_english": "das"}])
    assert batch["non_english"]["input_ids"].shape == (2, 5)
    assert batch["english"]["attention_mask"].tolist() == [[1, 1], [1, 0]]
    with pytest.raises(TrainingDataError, match="record 0 of the batch: field 'english'"):
        ParallelCollator(tok, tok)([{"english": None, "non_english": "das"}])
    rows = [{"query": "a b", "pos": ["the house"], "pos_scores": [5.0], "neg": ["c"],
             "neg_scores": [1.0]}] * 2
    groups = DistillationGroups(rows, group_size=2)
    out = GroupCollator(tok)([groups[0], groups[1]])
    assert out["docs"]["input_ids"].shape == (4, 2)
    assert torch.equal(out["teacher_scores"], torch.tensor([[5.0, 1.0], [5.0, 1.0]]))


def test_config_overrides_types_and_errors(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("stage: sap\noutput_dir: out\nlr: 2e-5\nmodel: {preset: tiny}\n")
    cfg = TrainConfig.from_file(path, ["max_steps=7", "model.path=/m", "bf16=false"])
    assert (cfg.lr, cfg.max_steps, cfg.model, cfg.bf16) == (2e-5, 7, {"preset": "tiny",
                                                                       "path": "/m"}, False)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['learning_rate'\]"):
        TrainConfig.from_file(path, ["learning_rate=1"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        TrainConfig.from_file(path, ["max_steps"])
    with pytest.raises(ConfigError, match="needs freeze_encoder"):
        TrainConfig.from_file(path, ["cache_encoder_states=true"])
    with pytest.raises(ConfigError, match="lr must be a number"):
        TrainConfig.from_file(path, ["lr=fast"])
    with pytest.raises(ConfigError, match="leave nothing to train in stage sap"):
        TrainConfig.from_file(path, ["freeze_encoder=true", "freeze_pivot=true"])


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "training"
                                         / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_training_config_is_valid(path: Path) -> None:
    cfg = TrainConfig.from_file(path)
    assert cfg.output_dir and cfg.stage in ("sap", "sct")


def test_jmdict_database_gives_priority_words_first_and_skips_marked_senses(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "jmdict.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE Kana (ID INTEGER PRIMARY KEY, idseq INTEGER, text TEXT);"
            "CREATE TABLE Kanji (ID INTEGER PRIMARY KEY, idseq INTEGER, text TEXT);"
            "CREATE TABLE KNP (kid INTEGER, text TEXT); CREATE TABLE KJP (kid INTEGER, text TEXT);"
            "CREATE TABLE Sense (ID INTEGER PRIMARY KEY, idseq INTEGER);"
            "CREATE TABLE SenseGloss (sid INTEGER, lang TEXT, text TEXT);"
            "CREATE TABLE misc (sid INTEGER, text TEXT);")
        words = [(1, "ぺきん", "北京", "nf20", "Beijing", None),
                 (2, "いぬ", "犬", "nf01", "dog", None),
                 (3, "これ", "此れ", None, "this", "word usually written using kana alone"),
                 (4, "むかし", "昔", "ichi1", "olden days", "archaism")]
        for n, kana, kanji, priority, gloss, note in words:
            db.execute("INSERT INTO Kana VALUES (?, ?, ?)", (n, n, kana))
            db.execute("INSERT INTO Kanji VALUES (?, ?, ?)", (n, n, kanji))
            if priority:
                db.execute("INSERT INTO KJP VALUES (?, ?)", (n, priority))
            db.execute("INSERT INTO Sense VALUES (?, ?)", (n, n))
            db.execute("INSERT INTO SenseGloss VALUES (?, 'eng', ?)", (n, gloss))
            if note:
                db.execute("INSERT INTO misc VALUES (?, ?)", (n, note))
    rows = load_parallel_source({"kind": "dictionary", "path": str(path), "languages": ["ja"]})
    # nf01 before nf20 before no tag; kana-only words by their kana; archaic senses left out
    assert [(r["non_english"], r["english"]) for r in rows] == [
        ("犬", "dog"), ("北京", "Beijing"), ("これ", "this")]
