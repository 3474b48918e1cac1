"""Titles are encoded with the text (``title + " " + text``), as BEIR, MIRACL and MTEB do."""

from __future__ import annotations

import json

import pytest

from milco_os.encoders import SparseEncoder
from milco_os.engines.local import LocalEngine
from milco_os.index.spec import EncodeFields, IngestSpec, Passages
from milco_os.pipeline.ingest import Ingestor
from milco_os.pipeline.search import Searcher
from milco_os.text.corpus import read_files

TEXT = "The city has a harbour, a university, old row houses and busy markets. " * 3
CITIES = ["Denver", "Chicago", "Seattle", "Baltimore"]  # the answer is indexed last: ties lose


@pytest.fixture(scope="module")
def splade(shared_dir) -> SparseEncoder:
    return SparseEncoder.from_pretrained(shared_dir / "models" / "splade-tiny", device="cpu")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "cities.jsonl"
    path.write_text("".join(json.dumps({"id": city.lower(), "title": city, "text": TEXT}) + "\n"
                            for city in CITIES))
    return path


def ranking(splade, tmp_path, corpus, spec: IngestSpec, query: str) -> list[str]:
    engine = LocalEngine(tmp_path / spec.index)
    Ingestor(engine, spec, splade, progress=False).run(read_files([corpus]))
    return [hit.doc_id for hit in Searcher(engine, spec.index, splade).search([query], k=4)[0]]


def test_a_title_word_finds_its_document(splade, tmp_path, corpus) -> None:
    spec = IngestSpec(index="titled", model="splade-tiny")
    assert ranking(splade, tmp_path, corpus, spec, "baltimore")[0] == "baltimore"


def test_encoding_only_the_text_is_a_spec_choice(splade, tmp_path, corpus) -> None:
    spec = IngestSpec.from_dict({"index": "untitled", "encode": {"fields": ["text"]}})
    hits = ranking(splade, tmp_path, corpus, spec, "baltimore")
    assert not hits or hits[0] != "baltimore"  # identical vectors: the tie goes to the first


def test_every_passage_of_a_long_document_carries_its_title(splade, tmp_path, corpus) -> None:
    spec = IngestSpec(index="passages", passages=Passages(window=12))
    engine = LocalEngine(tmp_path / "passages")
    report = Ingestor(engine, spec, splade, progress=False).run(read_files([corpus]))
    assert report.passages > 2 * len(CITIES)
    hits = Searcher(engine, "passages", splade).search(["baltimore"], k=report.passages)[0]
    passages = [hit for hit in hits if hit.doc_id == "baltimore"]
    assert len(passages) == report.passages // len(CITIES)
    assert all(hit.score > others.score for hit in passages
               for others in hits if others.doc_id != "baltimore")


def test_fields_and_separator() -> None:
    assert EncodeFields().text("Title", "body") == "Title body"
    assert EncodeFields().text(None, "body") == "body"
    assert EncodeFields(("text", "title"), " | ").text("T", "b") == "b | T"
