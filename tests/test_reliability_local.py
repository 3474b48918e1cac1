"""Reliability cases that need no cluster: encode alignment, local storage, broken checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from _ingest_helpers import write_corpus
from _model_helpers import make_tiny
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM

from milco_os.cli import main
from milco_os.corpus import read_files
from milco_os.engines.local import LocalEngine
from milco_os.errors import ModelLoadError
from milco_os.ingest import Ingestor
from milco_os.models.registry import load_sparse_model
from milco_os.spec import BatchSizes, IngestSpec


def test_blank_stdin_lines_keep_encode_output_aligned(tmp_path) -> None:
    model = make_tiny(tmp_path / "m")
    result = CliRunner().invoke(main, ["encode", "--model", str(model), "--json", "-"],
                                input="first\n\n   \nlast\n")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["first", "", "   ", "last"]
    assert lines[1]["pivot"] == {} and lines[0]["pivot"]


def test_local_storage_does_not_grow_on_re_runs(tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 60)
    engine = LocalEngine(tmp_path / "engine")
    spec = IngestSpec(index="again", batch=BatchSizes(encode=25, bulk_docs=25))
    sizes = []
    for _ in range(3):
        report = Ingestor(engine, spec, progress=False).run(read_files([tmp_path / "c.jsonl"]))
        sizes.append(report.index_bytes)
    assert sizes[0] == sizes[1] == sizes[2], sizes
    assert engine.count("again") == 60


def test_an_id_too_long_for_its_passage_suffix_names_both_sizes(tmp_path) -> None:
    rows = write_corpus(tmp_path / "c.jsonl", 3)
    rows[1]["id"] = "x" * 512  # the limit itself: '#0' makes the engine id 514 bytes
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    errors = tmp_path / "errors.jsonl"
    report = Ingestor(LocalEngine(tmp_path / "engine"), IngestSpec(index="ids"), progress=False,
                      error_log=errors).run(read_files([tmp_path / "c.jsonl"]))
    assert (report.read, report.indexed, report.invalid) == (3, 2, 1)
    assert "id is 512 bytes long; with its passage suffix ('#N', 2 bytes) it must fit the " \
        "engines' 512, so ids may have at most 510 bytes" in errors.read_text()


@pytest.fixture
def splade_folder(tmp_path):
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32)
    folder = tmp_path / "splade"
    BertForMaskedLM(config).save_pretrained(folder)
    return folder


def test_a_splade_checkpoint_with_nan_is_refused(splade_folder) -> None:
    state = load_file(splade_folder / "model.safetensors")
    name = next(k for k in state if k.endswith("attention.self.query.weight"))
    state[name][0, 0] = float("nan")
    save_file(state, splade_folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="NaN"):
        load_sparse_model(splade_folder)


def test_a_splade_checkpoint_missing_a_tensor_is_refused(splade_folder) -> None:
    state = load_file(splade_folder / "model.safetensors")
    name = next(k for k in state if k.endswith("attention.self.query.weight"))
    del state[name]
    save_file({k: v.contiguous() for k, v in state.items()}, splade_folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lacks 1 tensor"):
        load_sparse_model(splade_folder)


def test_a_complete_splade_checkpoint_loads(splade_folder) -> None:
    model = load_sparse_model(splade_folder)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_a_pre_encoded_corpus_never_loads_the_model(tmp_path, monkeypatch) -> None:
    import importlib

    ingest_cli = importlib.import_module("milco_os.cli.ingest")

    def refuse(*_args):
        raise AssertionError("the model was loaded for a pre-encoded corpus")

    monkeypatch.setattr(ingest_cli, "load_encoder", refuse)
    write_corpus(tmp_path / "c.jsonl", 5)
    result = CliRunner().invoke(main, ["ingest", "--engine", "local", "--local-path",
                                       str(tmp_path / "engine"), "--index", "pre", "--input",
                                       str(tmp_path / "c.jsonl"), "--model", "milco-small",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["indexed"] == 5
