"""Hostile corpora through the real encoder and a real OpenSearch: every record accounted for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from milco_os.cli import main
from milco_os.encoders import SparseEncoder
from milco_os.engines import open_engine
from milco_os.engines.connection import ConnectionSettings
from milco_os.index.spec import BatchSizes, IngestSpec
from milco_os.models.presets import init_model
from milco_os.pipeline.ingest import Ingestor
from milco_os.text.corpus import read_files

pytestmark = pytest.mark.cluster

GOOD = {
    "control": "tab\there, bell\x07, nul-free \x1b[31mescape\x1b[0m",
    "emoji": "Mixed scripts 北京 Москва القاهرة 🙂🚀 in one line",
    "rtl": "مرحبا بالعالم — שלום עולם",
    "dots": "U.S. 3.14 100% e.g. a%2Eb",
    "huge": "word " * 1_000_000,  # a 5 MB document: truncated by the model, not refused
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model("tiny", tmp_path_factory.mktemp("bad-input") / "tiny")


def write_hostile_corpus(path: Path) -> None:
    lines = [json.dumps({"id": key, "text": text}, ensure_ascii=False).encode()
             for key, text in GOOD.items()]
    lines += [
        json.dumps({"id": "empty", "text": ""}).encode(),
        json.dumps({"id": "blank", "text": " \n\t "}).encode(),
        b'{"id": "bad-utf8", "text": "caf\xe9"}',
        json.dumps({"id": "rtl", "text": "same id again in this batch"}).encode(),
        json.dumps({"text": "no id at all"}).encode(),
        json.dumps({"id": "typed", "text": ["not", "a", "string"]}).encode(),
        json.dumps({"id": {"nested": 1}, "text": "id of the wrong type"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_every_record_is_indexed_or_failed_with_its_reason(model_dir, cluster_url, index_name,
                                                           tmp_path) -> None:
    write_hostile_corpus(tmp_path / "c.jsonl")
    engine = open_engine(ConnectionSettings(url=cluster_url))
    spec = IngestSpec(index=index_name, model=str(model_dir), prune="topk:32",
                      batch=BatchSizes(encode=16))
    encoder = SparseEncoder.from_pretrained(model_dir, device="cpu")
    report = Ingestor(engine, spec, encoder, progress=False,
                      error_log=tmp_path / "errors.jsonl").run(read_files([tmp_path / "c.jsonl"]))
    assert report.read == 12
    assert report.indexed + report.skipped + report.failed == report.read
    assert report.indexed == len(GOOD)
    errors = "\n".join(report.errors)
    for expected in ("(id 'empty')", "empty text", "(id 'blank')",
                     "line 8: field '<utf-8>': invalid UTF-8", "(id 'rtl')", "duplicate id",
                     "missing document id",
                     "(id 'typed')", "text must be a string", "id must be a string"):
        assert expected in errors, expected
    assert len((tmp_path / "errors.jsonl").read_text().splitlines()) == report.failed
    engine.refresh(index_name)
    stored = engine.get_sources(index_name, [f"{key}#0" for key in GOOD])
    assert stored.keys() == {f"{key}#0" for key in GOOD}
    assert stored["rtl#0"]["text"] == GOOD["rtl"]  # the first of the duplicates is kept
    assert all(0 < len(s["pivot"]) <= 32 for s in stored.values())


def test_search_refuses_a_model_other_than_the_index_s(model_dir, cluster_url, index_name,
                                                       tmp_path) -> None:
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "text": "hello world"}) + "\n")
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", "--index", index_name, "--input",
                                  str(tmp_path / "c.jsonl"), "--model", str(model_dir),
                                  "--prune", "topk:16", "--url", cluster_url, "--quiet"])
    assert result.exit_code == 0, result.output
    other = init_model("tiny", tmp_path / "other", seed=1)
    query = ["search", "--index", index_name, "--model", str(other), "--url", cluster_url,
             "--query-prune", "topk:16", "hello"]
    refused = runner.invoke(main, query)
    assert refused.exit_code != 0 and "was built with model" in refused.output
    forced = runner.invoke(main, [*query, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "warning: index" in forced.output
