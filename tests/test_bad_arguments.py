"""Every command with bad arguments: one `error:` line (or Click's usage line), no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _ingest_helpers import write_corpus
from _model_helpers import make_tiny
from click.testing import CliRunner

from milco_os.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A good tiny model and the broken folders users hand in."""
    root = tmp_path_factory.mktemp("models")
    good = make_tiny(root / "good")
    (root / "empty").mkdir()
    truncated = shutil.copytree(good, root / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (truncated / "pytorch_model.bin").unlink(missing_ok=True)
    bad_config = shutil.copytree(good, root / "bad-config")
    (bad_config / "config.json").write_text('{"model_type": "milco", ')
    return {"good": good, "missing": root / "nope", "empty": root / "empty",
            "truncated": truncated, "bad-config": bad_config}


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict[str, str]:
    """Environment for the local engine, with one MILCO index ``news``."""
    root = tmp_path_factory.mktemp("local")
    corpus = root / "c.jsonl"
    write_corpus(corpus, 3)
    env = {"MILCO_OS_ENGINE": "local", "MILCO_OS_LOCAL_PATH": str(root / "engine"),
           "MILCO_OS_URL": ""}
    result = CliRunner(env=env).invoke(main, ["ingest", "--index", "news", "--input",
                                              str(corpus), "--quiet"])
    assert result.exit_code == 0, result.output
    return {**env, "corpus": str(corpus), "root": str(root)}


def run(env: dict[str, str], args: list[str], stdin: bytes | None = None):
    clean = {k: v for k, v in env.items() if k.startswith("MILCO_OS")}
    return CliRunner(env=clean).invoke(main, [str(a) for a in args], input=stdin)


def assert_one_line_error(result, *words: str, code: int | None = None) -> None:
    output = result.output
    assert "Traceback" not in output, output
    assert result.exit_code != 0, output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    if code is not None:
        assert result.exit_code == code, output
    last = output.strip().splitlines()[-1]
    assert last.startswith(("error: ", "Error: ")), output
    assert "internal error" not in last, output
    for word in words:
        assert word in output, (word, output)


MODEL_CASES = ["missing", "empty", "truncated", "bad-config"]


@pytest.mark.parametrize("case", MODEL_CASES)
def test_a_bad_model_is_one_line_in_every_command(models, local, case) -> None:
    model = models[case]
    for args in (["encode", "--model", model, "hello"],
                 ["search", "--index", "news", "--model", model, "--force", "hello"],
                 ["dsl", "--model", model, "hello"],
                 ["ingest", "--index", f"fresh-{case}", "--input", local["corpus"], "--model",
                  model, "--quiet"],
                 ["model", "info", model]):
        result = run(local, args)
        assert_one_line_error(result, str(model.name))
        assert result.exit_code == 2, result.output


def test_bad_option_values_name_the_option(models, local) -> None:
    good = models["good"]
    cases = [
        (["encode", "--model", good, "--device", "foo", "x"], "--device"),
        (["encode", "--model", good, "--device", "cuda:7", "x"], "--device"),
        (["encode", "--model", good, "--prune", "mass:nan", "x"], "--prune"),
        (["encode", "--model", good, "--prune", "threshold:inf", "x"], "--prune"),
        (["search", "--index", "news", "--alpha", "nan", "x"], "--alpha"),
        (["search", "--index", "news", "--prune-ratio", "0", "x"], "--prune-ratio"),
        (["search", "--index", "news", "--expansion-rate", "0.5", "x"], "--expansion-rate"),
        (["search", "--index", "news", "--query-prune", "topk:lots", "x"], "--query-prune"),
        (["ingest", "--index", "news", "--input", local["corpus"], "--retries", "-1"],
         "--retries"),
        (["ingest", "--index", "news", "--input", local["corpus"], "--max-length", "-7"],
         "--max-length"),
        (["ingest", "--index", "news", "--input", local["corpus"], "--shard", "5/4"], "--shard"),
        (["ingest", "--index", "news", "--input", local["corpus"], "--prune", "5"], "--prune"),
        (["index", "create", "x", "--model", "m", "--pruning", "mass:2"], "--pruning"),
        (["index", "info", "news", "--url", "http://", "--engine", "opensearch"], "--url"),
        (["index", "info", "news", "--url", "localhost:9200", "--engine", "opensearch"], "--url"),
        (["index", "info", "news", "--url", "http://h:port", "--engine", "opensearch"], "--url"),
    ]
    for args, option in cases:
        assert_one_line_error(run(local, args), option, code=2)


def test_bad_spec_values_name_the_file_and_key(local, tmp_path) -> None:
    cases = {"max_length: lots": "max_length", "max_length: -7": "max_length",
             "prune: 5": "prune", "prune: mass:nan": "prune", "batch: {encode: 0}": "batch.encode",
             "- a\n- b": "expected a mapping", "views: [pivot, nope]": "views",
             "engine: {shards: 1.5}": "engine.shards", "source: [a]": "source",
             "encode: {fields: [body]}": "encode.fields", "passages: {window: 0}": "passages"}
    for number, (text, key) in enumerate(cases.items()):
        spec = tmp_path / f"s{number}.yaml"
        spec.write_text(text + "\n")
        result = run(local, ["ingest", "--index", "news", "--spec", spec, "--input",
                             local["corpus"]])
        assert_one_line_error(result, key, spec.name, code=2)


def test_invalid_utf8_on_stdin_names_the_line(models, local) -> None:
    stdin = b"good line\n\xff\xfe bad\n"
    for args in (["encode", "--model", models["good"], "-"],
                 ["search", "--index", "news"]):
        assert_one_line_error(run(local, args, stdin), "line 2", "UTF-8", code=2)


def test_unknown_index_and_empty_query(models, local) -> None:
    assert_one_line_error(run(local, ["search", "--index", "nope", "--model", models["good"],
                                      "x"]), "nope", code=1)
    assert_one_line_error(run(local, ["index", "info", "nope"]), "nope", code=1)
    assert_one_line_error(run(local, ["index", "delete", "nope", "--yes"]), "nope", code=1)
    assert_one_line_error(run(local, ["index", "create", "Bad*Name", "--model", "m"]),
                          "invalid index name", code=2)
    empty = run(local, ["search", "--index", "news", "--model", models["good"], "--force", " "])
    assert_one_line_error(empty, "empty query", code=2)
    assert_one_line_error(run(local, ["dsl", "--model", models["good"], ""]), "empty query",
                          code=2)


def test_bad_input_files_name_the_file(local, tmp_path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    unsupported = tmp_path / "c.xml"
    unsupported.write_text("<a/>")
    for path, words in ((broken, ["broken.parquet"]), (unsupported, ["unsupported file type"])):
        result = run(local, ["ingest", "--index", "files", "--input", local["corpus"],
                             "--input", path, "--quiet"])
        assert_one_line_error(result, *words, code=2)


def test_evaluate_and_model_commands(local, tmp_path) -> None:
    assert_one_line_error(run(local, ["evaluate", "--dataset", tmp_path / "nope", "--index",
                                      "news"]), "nope", code=2)
    assert_one_line_error(run(local, ["evaluate", "--dataset", tmp_path, "--index", "news",
                                      "--alpha", "nan"]), "--alpha", code=2)
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "model.safetensors").write_text("trained weights")
    refused = run(local, ["model", "init", "--preset", "tiny", "--out", tmp_path / "held"])
    assert_one_line_error(refused, "not empty", "--force", code=2)
    assert (tmp_path / "held" / "model.safetensors").read_text() == "trained weights"


def test_a_blank_url_variable_is_not_a_url(local) -> None:
    result = run({**local, "MILCO_OS_ENGINE": "opensearch", "MILCO_OS_URL": "   "},
                 ["index", "info", "news"])
    assert_one_line_error(result, code=2)


def test_help_of_every_command_still_works(local) -> None:
    for args in (["--help"], ["ingest", "--help"], ["index", "delete", "--help"]):
        result = run(local, args)
        assert result.exit_code == 0 and "Usage" in result.output, result.output
    assert json.loads(run(local, ["index", "info", "news"]).output)["docs"] == 3


def test_a_password_in_the_url_is_never_printed(local) -> None:
    url = "http://user:s3cretpw@127.0.0.1:1"
    env = {**local, "MILCO_OS_ENGINE": "opensearch"}
    for args in (["ingest", "--index", "news", "--input", local["corpus"], "--retries", "0",
                  "--url", url, "--quiet"],
                 ["index", "info", "news", "--url", url],
                 ["search", "--index", "news", "--url", url, "a query"]):
        result = run(env, args)
        assert_one_line_error(result)
        assert "s3cretpw" not in result.output and "127.0.0.1" in result.output, result.output
