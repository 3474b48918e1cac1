"""`milco-os encode` and `milco-os model` on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _model_helpers import make_tiny
from click.testing import CliRunner

from milco_os.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny"))


def run(*args: str, stdin: str | None = None):
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result


def test_encode_json_has_one_object_per_text(folder):
    result = run("encode", "--model", str(folder), "--json", "--prune", "topk:5",
                 "la ville", "die Stadt")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["la ville", "die Stadt"]
    for line in lines:
        assert set(line) == {"text", "pivot", "echo"}
        assert 0 < len(line["pivot"]) <= 5 and 0 < len(line["echo"]) <= 5
        assert all(isinstance(w, float) and w > 0 for w in line["pivot"].values())


def test_encode_reads_stdin_and_drops_specials(folder):
    result = run("encode", "--model", str(folder), "--json", "--drop-special", "-",
                 stdin="la ville\n\ndie Stadt\n")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    # a blank line keeps its place (an empty vector), so output lines match input lines
    assert [line["text"] for line in lines] == ["la ville", "", "die Stadt"]
    assert lines[1]["pivot"] == {} and lines[1]["echo"] == {}
    assert not {"<s>", "</s>"} & set(lines[0]["echo"])


def test_encode_readable_output_marks_views(folder):
    output = run("encode", "--model", str(folder), "--kind", "document", "la ville").stdout
    assert "pivot [" in output and "echo [" in output


def test_bad_prune_spec_is_a_usage_error(folder):
    result = CliRunner().invoke(main, ["encode", "--model", str(folder), "--prune", "mass:2", "x"])
    assert result.exit_code == 2 and "mass:2" in result.output


def test_model_init_and_info(tmp_path):
    out = tmp_path / "m"
    run("model", "init", "--preset", "tiny", "--out", str(out))
    info = json.loads(run("model", "info", str(out), "--json").stdout)
    assert info["model_type"] == "milco" and info["echo"] is True and info["scale"] == 1.0
    assert set(info["parameters"]) == {"m_model", "projector", "mlm_head", "echo"}
    assert info["echo_vocab"] > 0 and info["pivot_vocab"] > 0
