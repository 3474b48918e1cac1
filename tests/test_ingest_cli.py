"""`milco-os ingest` as users run it: reports, exit codes, a killed run resumed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _ingest_helpers import write_corpus
from click.testing import CliRunner

from milco_os.cli import main
from milco_os.engines import open_engine
from milco_os.engines.connection import ConnectionSettings

pytestmark = pytest.mark.cluster


def write_spec(path: Path, corpus: Path, bulk_docs: int = 50) -> Path:
    path.write_text(f"source: {{files: [{corpus}]}}\nbatch: {{encode: {bulk_docs}, "
                    f"bulk_docs: {bulk_docs}}}\nengine: {{refresh_interval: 1s}}\n")
    return path


def test_cli_ingest_prints_the_report(cluster_url, index_name, tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 30)
    result = CliRunner().invoke(main, ["ingest", "--index", index_name, "--input",
                                       str(tmp_path / "c.jsonl"), "--url", cluster_url, "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["read"], report["indexed"], report["failed"]) == (30, 30, 0)


def test_cli_ingest_exits_1_when_some_records_failed(cluster_url, index_name, tmp_path) -> None:
    (tmp_path / "c.jsonl").write_text('{"id": "a", "pivot": {"x": 1.0}}\n{"text": "no id"}\n')
    result = CliRunner().invoke(main, ["ingest", "--index", index_name, "--input",
                                       str(tmp_path / "c.jsonl"), "--url", cluster_url, "--quiet"])
    assert result.exit_code == 1
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["indexed"], report["failed"]) == (1, 1)
    assert "missing document id" in report["errors"][0]


def test_unreachable_cluster_fails_clearly_and_fast(tmp_path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_corpus(tmp_path / "c.jsonl", 3)
    start = time.monotonic()
    result = CliRunner().invoke(main, ["ingest", "--index", "x", "--input",
                                       str(tmp_path / "c.jsonl"), "--retries", "2",
                                       "--url", f"http://127.0.0.1:{port}", "--quiet"])
    assert result.exit_code not in (0, 1)
    assert f"127.0.0.1:{port}" in result.output and "cannot reach" in result.output
    assert time.monotonic() - start < 60


def settled_count(engine, index: str, pause: float = 0.5) -> int:
    """The index's document count once two counts ``pause`` seconds apart agree."""
    previous = -1
    while True:
        engine.refresh(index)
        count = engine.count(index)
        if count == previous:
            return count
        previous = count
        time.sleep(pause)


def test_killed_ingest_resumes_without_loss_or_duplicates(cluster_url, index_name,
                                                          tmp_path) -> None:
    total = 4000
    write_corpus(tmp_path / "c.jsonl", total)
    spec = write_spec(tmp_path / "spec.yaml", tmp_path / "c.jsonl", bulk_docs=20)
    engine = open_engine(ConnectionSettings(url=cluster_url))
    command = [sys.executable, "-m", "milco_os.cli", "ingest", "--index", index_name,
               "--spec", str(spec), "--url", cluster_url, "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if engine.index_exists(index_name):
            engine.refresh(index_name)
            if engine.count(index_name) >= 200:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the first run finished before it was killed"
    done_before = settled_count(engine, index_name)  # a bulk sent before the kill may land
    assert 0 < done_before < total

    result = CliRunner().invoke(main, ["ingest", "--index", index_name, "--spec", str(spec),
                                       "--url", cluster_url, "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["skipped"] == done_before  # nothing already indexed is sent again
    assert report["skipped"] + report["indexed"] == total
    engine.refresh(index_name)
    assert engine.count(index_name) == total


def test_a_red_cluster_is_refused_at_start(cluster_url, os_client, index_name, tmp_path) -> None:
    red = f"{index_name}-red"  # a primary that can never be assigned turns the cluster red
    os_client.indices.create(index=red, params={"wait_for_active_shards": "0"}, body={
        "settings": {"number_of_replicas": 0,
                     "index.routing.allocation.require._name": "no-such-node"}})
    try:
        write_corpus(tmp_path / "c.jsonl", 3)
        result = CliRunner().invoke(main, ["ingest", "--index", index_name, "--input",
                                           str(tmp_path / "c.jsonl"), "--url", cluster_url,
                                           "--quiet"])
        assert result.exit_code == 2
        assert "cluster health is red" in result.output
        assert not os_client.indices.exists(index=index_name)  # nothing half-built
    finally:
        os_client.indices.delete(index=red)
