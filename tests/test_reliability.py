"""Nothing lost, nothing misleading: each way an ingest or a command could go wrong."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from _ingest_helpers import write_corpus
from click.testing import CliRunner

from milco_os.cli import main
from milco_os.core.errors import IncompatibleIndexError
from milco_os.core.retry import RetryPolicy
from milco_os.engines import open_engine
from milco_os.engines.base import BulkDocument
from milco_os.engines.bulk import BulkSender
from milco_os.engines.cluster import classify_error
from milco_os.engines.connection import ConnectionSettings
from milco_os.engines.opensearch import OpenSearchEngine
from milco_os.index.spec import BatchSizes, EngineSettings, IngestSpec
from milco_os.pipeline.ingest import IngestError, Ingestor
from milco_os.text.corpus import CorpusFileError, read_files

pytestmark = pytest.mark.cluster


def ingest_cli(url: str, index: str, *args) -> tuple[int, dict | None, str]:
    result = CliRunner().invoke(main, ["ingest", "--index", index, "--url", url, "--quiet",
                                       *map(str, args)])
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, json.loads(lines[-1]) if lines else None, result.stderr


def engine_for(url: str) -> OpenSearchEngine:
    return open_engine(ConnectionSettings(url=url))


def test_concurrent_shard_workers_create_the_index_once(cluster_url, index_name,
                                                        tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 400)
    spec = IngestSpec(index=index_name, batch=BatchSizes(encode=50, bulk_docs=50))
    reports, errors = [], []

    def worker(i: int) -> None:
        try:
            records = read_files([tmp_path / "c.jsonl"])
            reports.append(Ingestor(engine_for(cluster_url), spec, progress=False,
                                    shard_of=(i, 4)).run(records))
        except Exception as exc:  # noqa: BLE001 -- collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sum(r.indexed for r in reports) == 400
    assert engine_for(cluster_url).count(index_name) == 400


def test_an_unterminated_csv_quote_stops_naming_the_file_and_line(tmp_path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('id,text\nd1,"hello world\nd2,"second"\nd3,third\n')
    with pytest.raises(CorpusFileError, match=r"c\.csv: line \d+"):
        list(read_files([path]))


def test_an_id_too_long_costs_only_its_record(cluster_url, index_name, tmp_path) -> None:
    rows = write_corpus(tmp_path / "c.jsonl", 22)
    rows.insert(5, {**rows[0], "id": "x" * 600})
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, report, stderr = ingest_cli(cluster_url, index_name, "--input", tmp_path / "c.jsonl")
    assert code == 1, stderr
    assert (report["indexed"], report["failed"]) == (22, 1)
    assert "512" in report["errors"][0]
    assert engine_for(cluster_url).count(index_name) == 22


def test_a_request_refused_whole_is_split_until_the_bad_document(cluster_url,
                                                                 index_name) -> None:
    engine = engine_for(cluster_url)
    engine.create_index(index_name, meta=IngestSpec(index=index_name).describe())
    docs = [(f"d{i}#0", {"doc_id": f"d{i}", "passage": 0, "pivot": {"a": 1.0}, "echo": {}})
            for i in range(7)]
    docs.insert(3, ("y" * 700, docs[0][1]))  # the engine refuses the whole bulk request
    sender = BulkSender(engine, index_name, RetryPolicy(attempts=2))
    failures = sender.send([BulkDocument.of(index_name, i, source) for i, source in docs])
    assert [f.id for f in failures] == ["y" * 700]
    engine.refresh(index_name)
    assert engine.count(index_name) == 7


def test_an_index_without_the_milco_mapping_is_refused(cluster_url, index_name, os_client,
                                                       tmp_path) -> None:
    os_client.indices.create(index=index_name)
    write_corpus(tmp_path / "c.jsonl", 5)
    code, _, stderr = ingest_cli(cluster_url, index_name, "--input", tmp_path / "c.jsonl")
    assert code == 2 and "no MILCO mapping" in stderr, stderr
    fields = os_client.indices.get_mapping(index=index_name)[index_name]["mappings"]
    assert "pivot" not in fields.get("properties", {})


def test_other_pruning_is_refused_unless_forced(cluster_url, index_name, tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 5)
    assert ingest_cli(cluster_url, index_name, "--input", tmp_path / "c.jsonl",
                      "--prune", "mass:0.5")[0] == 0
    code, _, stderr = ingest_cli(cluster_url, index_name, "--input", tmp_path / "c.jsonl",
                                 "--prune", "none")
    assert code == 2 and "pruning 'mass:0.5'" in stderr, stderr
    with pytest.raises(IncompatibleIndexError):
        Ingestor(engine_for(cluster_url), IngestSpec(index=index_name, views=("pivot",),
                                                     prune="mass:0.5"), progress=False).run([])
    assert ingest_cli(cluster_url, index_name, "--input", tmp_path / "c.jsonl",
                      "--prune", "none", "--force")[0] == 0


def interrupted_records(path: Path, after: int):
    for number, record in enumerate(read_files([path])):
        if number == after:
            raise KeyboardInterrupt("SIGTERM")
        yield record


def test_an_interrupted_ingest_restores_the_refresh_interval(cluster_url, index_name,
                                                              tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 200)
    spec = IngestSpec(index=index_name, engine=EngineSettings(refresh_interval="-1"),
                      batch=BatchSizes(encode=20, bulk_docs=20))
    engine = engine_for(cluster_url)
    with pytest.raises(IngestError, match="interrupted") as stopped:
        Ingestor(engine, spec, progress=False).run(interrupted_records(tmp_path / "c.jsonl", 90))
    info = engine.index_info(index_name)
    assert info["settings"]["refresh_interval"] is None  # the engine default again
    assert info["docs"] == stopped.value.report.indexed > 0  # visible without a refresh


def test_retries_zero_means_one_attempt(cluster_url, index_name, tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 5)
    code, report, stderr = ingest_cli(cluster_url, index_name, "--input", tmp_path / "c.jsonl",
                                      "--retries", "0")
    assert code == 0 and report["indexed"] == 5, stderr


def unread_bytes(pipe) -> int:
    return struct.unpack("i", fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def open_fifo_for(process: subprocess.Popen, fifo: Path):
    """The writing end of ``fifo`` once ``process`` has opened it; its stderr if it died first
    (a blocking open would wait forever for a reader that is gone)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ingest exited {process.returncode} before reading: "
                        f"{process.stderr.read()}")
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            time.sleep(0.2)
            continue
        os.set_blocking(fd, True)
        return os.fdopen(fd, "w")
    process.kill()
    pytest.fail("ingest never opened its input")


def test_sigint_mid_ingest_prints_the_report_and_exits_2(cluster_url, index_name,
                                                         tmp_path) -> None:
    """A real ``milco-os ingest`` process, fed half a corpus through a FIFO, then SIGINT
    while it waits for more: exit 2, the report, and what it read is indexed."""
    fifo = tmp_path / "stream.jsonl"
    os.mkfifo(fifo)
    rows = [json.dumps(r) + "\n" for r in write_corpus(tmp_path / "c.jsonl", 30)]
    # A runner started in the background of a non-interactive shell ignores SIGINT, and
    # the child would inherit that (Python then installs no KeyboardInterrupt handler).
    process = subprocess.Popen(
        [sys.executable, "-m", "milco_os.cli", "ingest", "--index", index_name, "--url",
         cluster_url, "--quiet", "--input", str(fifo)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    with open_fifo_for(process, fifo) as out:
        out.writelines(rows[:15])
        out.flush()
        # wait until the ingest has drained the pipe (its batch is not full: it waits for more)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and unread_bytes(out) > 0:
            time.sleep(0.2)
        time.sleep(2)  # the lines it read are parsed and counted before it reads again
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)
    report = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
    assert process.returncode == 2 and "interrupted" in stderr, stderr
    assert report["read"] == 15 and report["indexed"] == 15


def test_a_corrupt_second_file_reports_and_names_it(cluster_url, index_name, tmp_path) -> None:
    write_corpus(tmp_path / "a.jsonl", 10)
    (tmp_path / "b.parquet").write_bytes(b"PAR1 not a parquet file PAR1")
    code, report, stderr = ingest_cli(cluster_url, index_name, "--input", tmp_path / "a.jsonl",
                                      "--input", tmp_path / "b.parquet")
    assert code == 2 and "b.parquet" in stderr, stderr
    assert report["read"] == 10 and report["indexed"] == 10


def test_an_empty_input_file_exits_1_with_a_warning(cluster_url, index_name, tmp_path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    code, report, stderr = ingest_cli(cluster_url, index_name, "--input",
                                      tmp_path / "empty.jsonl")
    assert code == 1 and "no records read" in stderr and report["read"] == 0, stderr


def test_the_progress_bar_counts_what_the_report_counts(cluster_url, index_name,
                                                        tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 45)
    result = CliRunner().invoke(main, ["ingest", "--index", index_name, "--url", cluster_url,
                                       "--input", str(tmp_path / "c.jsonl")])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    final = result.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert f" {report['read']}doc" in final and f"indexed={report['indexed']}" in final, final


def test_a_401_without_a_body_says_unauthorized() -> None:
    assert "Unauthorized" in str(classify_error("GET", "/", 401, ""))
    assert "HTTP 401: Unauthorized (check the user" in str(classify_error("GET", "/", 401, None))


def test_all_shards_failed_says_why_the_first_shard_failed() -> None:
    error = {"type": "search_phase_execution_exception", "reason": "all shards failed",
             "failed_shards": [{"shard": 0, "reason": {
                 "type": "too_many_nested_clauses", "reason": "maxClauseCount is set to 1024"}}]}
    message = str(classify_error("POST", "/x/_search", 400, error))
    assert message.endswith("all shards failed (caused by too_many_nested_clauses: "
                            "maxClauseCount is set to 1024)"), message


def test_index_delete_missing_ok_says_nothing_was_deleted(cluster_url) -> None:
    result = CliRunner().invoke(main, ["index", "delete", "never-made", "--missing-ok", "--yes",
                                       "--url", cluster_url])
    assert result.exit_code == 0 and "does not exist: nothing deleted" in result.output


def test_bulk_bodies_stay_within_the_byte_limit_in_chinese(cluster_url, index_name,
                                                           tmp_path) -> None:
    sizes: list[int] = []

    class Recording(OpenSearchEngine):
        def request(self, method, path, body=None, params=None, ndjson=False):
            if path == "/_bulk":
                sizes.append(len(body.encode("utf-8")))
            return super().request(method, path, body, params, ndjson)

    text = "北京是中华人民共和国的首都，也是全国的政治和文化中心。" * 40  # ~3 bytes a character
    rows = [{"id": f"文档-{i}", "title": "中文标题", "text": text,
             "pivot": {f"词{j}": 1.0 for j in range(30)}} for i in range(60)]
    (tmp_path / "zh.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                               for r in rows))
    limit = 40_000
    spec = IngestSpec(index=index_name, batch=BatchSizes(bulk_docs=500, bulk_bytes=limit))
    report = Ingestor(Recording(ConnectionSettings(url=cluster_url)), spec,
                      progress=False).run(read_files([tmp_path / "zh.jsonl"]))
    assert report.indexed == 60
    assert max(sizes) <= limit < max(sizes) + len(text.encode()) * 2  # full, never over
    assert len(sizes) >= 60 * len(text.encode()) // limit
