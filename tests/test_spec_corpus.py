"""Ingest specs, corpus readers and passage splitting (no cluster needed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from milco_os.index.spec import IngestSpec, SpecError
from milco_os.text.corpus import Document, FieldMap, RecordError, read_files, shard
from milco_os.text.passages import PassageSplitter

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_spec_loads() -> None:
    specs = sorted((REPO / "ingest").glob("*.yaml"))
    assert {"miracl-en", "sample-multilingual", "mldr-en"} <= {p.stem for p in specs}
    for path in specs:
        spec = IngestSpec.load(path)
        assert spec.index == path.stem
        # unless a spec says otherwise, the model's recommended document pruning
        assert str(spec.pruning) == ("topk:32" if spec.model == "milco-small" else "none")
        assert spec.source.files or spec.source.hub


def test_sample_spec_points_at_the_shipped_corpus() -> None:
    spec = IngestSpec.find("sample-multilingual")
    records = list(read_files(spec.source.files, spec.source.fields))
    assert all(isinstance(r, Document) for r in records)
    assert {r.lang for r in records} == {"en", "de", "zh", "ar", "hi", "ru", "es"}
    assert len({r.id for r in records}) == len(records) == 84


def test_spec_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("source: {files: [a.jsonl]}\nbatch: {encdoe: 3}\n")
    with pytest.raises(SpecError, match=r"x\.yaml.*batch.*encdoe"):
        IngestSpec.load(bad)
    with pytest.raises(SpecError, match="views"):
        IngestSpec(index="x", views=("pivot", "nope")).validated()


def test_overrides_win_over_the_spec() -> None:
    spec = IngestSpec.find("miracl-en").with_overrides(
        prune="mass:0.5", files=["a.jsonl"], batch_size=4, lang="xx", model=None)
    assert str(spec.prune) == "mass:0.5" and spec.source.files == ("a.jsonl",)
    assert spec.source.hub is None and spec.batch.encode == 4
    assert spec.source.fields.default_lang == "xx"
    assert spec.model == "omai-research/milco-650m"  # None means: not overridden


def test_jsonl_csv_parquet_read_the_same(tmp_path: Path) -> None:
    rows = [{"docid": "1", "body": "eins", "title": "T"}, {"docid": "2", "body": "zwei",
                                                           "title": "U"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (tmp_path / "c.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["docid", "body", "title"])
        writer.writeheader()
        writer.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    fields = FieldMap(id="docid", text="body")
    for name in ("c.jsonl", "c.csv", "c.parquet"):
        docs = list(read_files([tmp_path / name], fields))
        assert [(d.id, d.text, d.title) for d in docs] == [("1", "eins", "T"), ("2", "zwei", "U")]


def test_unsupported_or_missing_files_fail_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported file type"):
        read_files([tmp_path / "c.xml"])
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_files([tmp_path / "nope.jsonl"])
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(FileNotFoundError, match="is a folder"):
        read_files([tmp_path / "folder.jsonl"])


def test_a_named_pipe_is_read_like_a_file(tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "stream.jsonl"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text('{"id": "a", "text": "x"}\n'))
    writer.start()
    assert [d.id for d in read_files([fifo])] == ["a"]
    writer.join(timeout=10)


def test_bad_records_say_which_field(tmp_path: Path) -> None:
    lines = [{"id": 5, "text": "ok"}, {"id": "a", "text": 3}, {"id": "b", "text": "x",
                                                              "pivot": {"t": "heavy"}}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    first, second, third = read_files([tmp_path / "c.jsonl"])
    assert isinstance(first, Document) and first.id == "5"
    assert isinstance(second, RecordError) and second.field == "text" and second.id == "a"
    assert isinstance(third, RecordError) and third.field == "pivot" and "'t'" in third.reason


def test_errors_name_the_line_of_the_file_not_the_record_count(tmp_path: Path) -> None:
    """A CSV header, blank lines and quoted fields over several lines all shift lines."""
    (tmp_path / "c.csv").write_text('id,text\na,"two\r\nlines"\n\nb,ok\n,no id\n'
                                    'c,"three\nlines\nhere"\n,again\n')
    (tmp_path / "c.jsonl").write_text('{"id": "x", "text": "ok"}\n\n{"text": "no id"}\n')
    errors = [str(r) for r in read_files([tmp_path / "c.csv", tmp_path / "c.jsonl"])
              if isinstance(r, RecordError)]
    assert [e.split(": field")[0] for e in errors] == [
        f"record 2 in {tmp_path / 'c.csv'} line 6", f"record 4 in {tmp_path / 'c.csv'} line 10",
        f"record 6 in {tmp_path / 'c.jsonl'} line 3"]


def test_a_lone_surrogate_costs_only_its_record(tmp_path: Path) -> None:
    """Valid JSON (an escaped ``\\ud800``) but not Unicode text: no tokenizer can read it."""
    lines = [{"id": "a", "text": "fine"}, {"id": "b", "text": "bad \ud800 text"},
             {"id": "c", "text": "fine", "title": "\udfff"}, {"id": "d", "text": "fine too"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = list(read_files([tmp_path / "c.jsonl"]))
    assert [type(r).__name__ for r in records] == ["Document", "RecordError", "RecordError",
                                                   "Document"]
    assert (records[1].id, records[1].field) == ("b", "text")
    assert "lone surrogate U+D800 at character 4" in records[1].reason
    assert (records[2].id, records[2].field) == ("c", "title")


@pytest.mark.parametrize("name", ["c.jsonl", "c.csv", "c.tsv"])
def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path: Path, name: str) -> None:
    if name.endswith(".jsonl"):
        body = '{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n'
    else:
        sep = "," if name.endswith(".csv") else "\t"
        body = f"id{sep}text\na{sep}one\nb{sep}two\n"
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + body.encode())
    records = list(read_files([tmp_path / name]))
    assert [(r.id, r.text) for r in records] == [("a", "one"), ("b", "two")]


def test_shards_partition_positions(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text("".join(
        json.dumps({"id": str(i), "text": "t"}) + "\n" for i in range(10)))
    parts = [[d.id for d in shard(read_files([tmp_path / "c.jsonl"]), i, 3)] for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(str(i) for i in range(10))
    assert parts[0] == ["0", "3", "6", "9"]
    with pytest.raises(ValueError):
        list(shard([], 3, 3))


def whitespace_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.enable_truncation(3)  # the splitter must see every token regardless
    return tok


def test_passages_are_exact_overlapping_windows() -> None:
    text = "one two three four five six seven"
    passages = PassageSplitter(whitespace_tokenizer(), window=3, stride=2)(text)
    assert passages == ["one two three", "three four five", "five six seven"]
    assert all(p in text for p in passages)
    assert PassageSplitter(whitespace_tokenizer(), window=None)(text) == [text]
    with pytest.raises(ValueError, match="stride"):
        PassageSplitter(whitespace_tokenizer(), window=2, stride=3)


def test_passages_follow_the_real_multilingual_tokenizer(shared_dir: Path) -> None:
    tok = Tokenizer.from_file(str(shared_dir / "models/xlmr-tokenizer/tokenizer.json"))
    text = "北京是中华人民共和国的首都，也是全国的政治和文化中心。" * 3
    passages = PassageSplitter(tok, window=10, stride=10)(text)
    assert len(passages) > 3 and "".join(passages) == text  # no whitespace needed
