"""Reliability cases that need no cluster: encode alignment, local storage, broken checkpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
from _ingest_helpers import write_corpus
from _model_helpers import make_tiny
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM

from milco_os.cli import main
from milco_os.core.errors import ModelLoadError
from milco_os.engines.local import LocalEngine
from milco_os.index.spec import BatchSizes, IngestSpec, SpecError
from milco_os.models.registry import load_sparse_model
from milco_os.pipeline.ingest import IngestError, Ingestor
from milco_os.text.corpus import read_files
from milco_os.vectors.pruning import Pruning


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


def test_a_segment_dropped_by_another_writer_while_loading_is_read_again(tmp_path,
                                                                         monkeypatch) -> None:
    import milco_os.engines.local as local

    writer, reader = LocalEngine(tmp_path), LocalEngine(tmp_path)
    writer.create_index("race", meta={"model": "m", "views": ["pivot"], "pruning": "none"})
    for weight in (1.0, 2.0):  # the second segment supersedes the first
        writer.bulk_index("race", [("d#0", {"doc_id": "d", "passage": 0,
                                            "pivot": {"x": weight}})])
    load = local._Snapshot.load_segment
    dropped = []

    def load_after_the_other_writer_refreshed(snapshot, directory, name):
        if not dropped:  # the reader has read the manifest; the writer now drops segment 1
            dropped.append(name)
            writer.refresh("race")
        return load(snapshot, directory, name)

    monkeypatch.setattr(local._Snapshot, "load_segment", load_after_the_other_writer_refreshed)
    assert reader.count("race") == 1
    assert reader.get_sources("race", ["d#0"])["d#0"]["pivot"] == {"x": 2.0}
    assert dropped and not (tmp_path / "race" / f"{dropped[0]}.npz").exists()


def _ingest_into(args: tuple[str, str]) -> dict:
    engine_dir, corpus = args
    spec = IngestSpec(index="common", batch=BatchSizes(encode=50, bulk_docs=50))
    return Ingestor(LocalEngine(engine_dir), spec, progress=False).run(
        read_files([corpus])).summary()


def test_three_concurrent_writers_of_the_same_ids_all_finish(tmp_path) -> None:
    import multiprocessing

    write_corpus(tmp_path / "c.jsonl", 1500)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        reports = pool.map(_ingest_into, [(str(tmp_path / "engine"), str(tmp_path / "c.jsonl"))]
                           * 3)
    assert [(r["read"], r["indexed"], r["failed"]) for r in reports] == [(1500, 1500, 0)] * 3
    engine = LocalEngine(tmp_path / "engine")
    assert engine.count("common") == 1500
    engine.refresh("common")
    named = json.loads((tmp_path / "engine" / "common" / "index.json").read_text())["segments"]
    on_disk = {p.stem for p in (tmp_path / "engine" / "common").glob("seg-*")}
    assert on_disk == set(named) and len(named) == 30  # every superseded segment dropped


def test_a_full_disk_names_the_file_leaves_no_partial_segment_and_reports(tmp_path,
                                                                         monkeypatch) -> None:
    import errno

    import numpy as np

    import milco_os.engines.local as local

    write_corpus(tmp_path / "c.jsonl", 100)
    engine = LocalEngine(tmp_path / "engine")
    engine.create_index("full", meta=IngestSpec(index="full").describe(), refresh_interval="5s")
    savez, written = np.savez, []

    def fill_the_disk(path, **arrays):
        if written:  # the second segment meets a full disk half-way through
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        return savez(path, **arrays)

    monkeypatch.setattr(local.np, "savez", fill_the_disk)
    spec = IngestSpec(index="full", batch=BatchSizes(encode=50, bulk_docs=50))
    with pytest.raises(IngestError, match=r"cannot write .*seg-.*\.npz: No space left") as stop:
        Ingestor(engine, spec, progress=False).run(read_files([tmp_path / "c.jsonl"]))
    report = stop.value.report
    assert (report.read, report.indexed) == (100, 50)
    folder = tmp_path / "engine" / "full"
    assert sorted(p.suffix for p in folder.glob("seg-*")) == [".jsonl", ".npz"]
    assert not list(folder.glob("*.tmp"))
    assert engine.index_info("full")["settings"]["refresh_interval"] == "5s"
    assert engine.count("full") == 50


def _records_while_another_run_loads(corpus, other) -> Iterator:
    """The corpus's records, with a whole second ingest run after the first ten."""
    for number, record in enumerate(read_files([corpus])):
        if number == 10:
            other()
        yield record


def test_overlapping_ingests_restore_the_owners_refresh_interval(tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 40)
    engine = LocalEngine(tmp_path / "engine")
    engine.create_index("owned", meta=IngestSpec(index="owned").describe(),
                        refresh_interval="5s")
    spec = IngestSpec(index="owned", batch=BatchSizes(encode=5, bulk_docs=5))
    seen_by_second = []

    def second_run():
        assert engine.index_info("owned")["settings"]["refresh_interval"] == "30s"
        Ingestor(engine, spec, progress=False).run(read_files([tmp_path / "c.jsonl"]))
        seen_by_second.append(engine.index_info("owned")["settings"]["refresh_interval"])

    report = Ingestor(engine, spec, progress=False).run(
        _records_while_another_run_loads(tmp_path / "c.jsonl", second_run))
    assert report.indexed == 40 and seen_by_second == ["5s"]
    assert engine.index_info("owned")["settings"]["refresh_interval"] == "5s"


def test_the_spec_pruning_is_the_one_applied_and_recorded(tmp_path) -> None:
    """One source of truth: what ``_meta`` records is what was indexed (an Ingestor
    once took the rule apart from the spec, and indexed unpruned vectors under
    ``pruning: topk:3``)."""
    write_corpus(tmp_path / "c.jsonl", 5)
    engine = LocalEngine(tmp_path / "engine")
    spec = IngestSpec(index="pruned", prune="topk:3")
    assert isinstance(spec.prune, Pruning) and str(spec.prune) == "topk:3"
    Ingestor(engine, spec, progress=False).run(read_files([tmp_path / "c.jsonl"]))
    assert engine.meta("pruned")["pruning"] == "topk:3"
    source = engine.get_sources("pruned", ["doc-0#0"])["doc-0#0"]
    assert len(source["pivot"]) == 3 and len(source["echo"]) == 1
    with pytest.raises(SpecError, match="prune: bad pruning spec 'top:3'"):
        IngestSpec(index="pruned", prune="top:3")


def test_without_a_prune_setting_milco_small_documents_keep_32_terms_per_view(tmp_path) -> None:
    """The recommended document pruning of milco-small (bench/pruning_curve.py), recorded in
    _meta; any other model, or ``prune: none``, keeps every term."""
    rows = write_corpus(tmp_path / "c.jsonl", 4)  # 20 pivot terms each: add 20 more
    for row in rows:
        row["pivot"].update({f"extra{j}": 0.01 * (j + 1) for j in range(20)})
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    engine = LocalEngine(tmp_path / "engine")
    for index, settings, kept in (("small", {}, 32), ("exact", {"prune": "none"}, 40),
                                  ("other", {"model": "another-model"}, 40)):
        Ingestor(engine, IngestSpec(index=index, **settings), progress=False).run(
            read_files([tmp_path / "c.jsonl"]))
        source = engine.get_sources(index, ["doc-1#0"])["doc-1#0"]
        assert len(source["pivot"]) == kept, index
        assert engine.meta(index)["pruning"] == ("topk:32" if kept == 32 else "none")
