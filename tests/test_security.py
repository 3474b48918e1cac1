"""A local cluster WITH the security plugin: TLS verified, credentials checked, secrets hidden."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _ingest_helpers import write_corpus
from click.testing import CliRunner

from milco_os.cli import main
from milco_os.devcluster import ClusterState, LocalCluster
from milco_os.devcluster.security import make_certificates
from milco_os.engines import EngineError, open_engine
from milco_os.engines.connection import ConnectionSettings

pytestmark = [pytest.mark.cluster, pytest.mark.security]


@pytest.fixture(scope="module")
def started() -> Iterator[tuple[ClusterState, str]]:
    """A secure cluster started as users start it, and what `cluster up` printed."""
    name = f"secure-{os.getpid()}"
    result = CliRunner().invoke(main, ["cluster", "up", "--secure", "--name", name,
                                       "--heap", "512m", "--runtime", "local"])
    assert result.exit_code == 0, result.output
    try:
        yield LocalCluster(name).state(), result.stderr
    finally:
        LocalCluster(name).destroy()


@pytest.fixture(scope="module")
def secure_cluster(started) -> ClusterState:
    return started[0]


def test_up_names_the_version_it_runs(started) -> None:
    state, printed = started
    assert "starting OpenSearch 2.11.1 (secure)" in printed and "2.19.6" not in printed
    assert LocalCluster(state.name).status()["version"] == "2.11.1"
    assert f"--password-file {state.password_file}" in printed


def test_user_flag_goes_with_a_password_file(secure_cluster, password, tmp_path,
                                             monkeypatch) -> None:
    """`--user admin --password-file PW`, as the README documents, with no MILCO_OS_USER."""
    for variable in ("MILCO_OS_USER", "MILCO_OS_PASSWORD", "MILCO_OS_PASSWORD_FILE"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "pw").write_text(password + "\n")
    settings = ConnectionSettings.from_env(user="admin", password_file=str(tmp_path / "pw"))
    assert (settings.user, settings.password) == ("admin", password)
    write_corpus(tmp_path / "c.jsonl", 4)
    result = CliRunner().invoke(main, [
        "ingest", "--index", "secure-flags", "--input", str(tmp_path / "c.jsonl"), "--quiet",
        "--url", secure_cluster.url, "--user", "admin", "--password-file", str(tmp_path / "pw"),
        "--ca-certs", secure_cluster.ca_file])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["indexed"] == 4
    assert password not in result.output


@pytest.fixture(scope="module")
def password(secure_cluster: ClusterState) -> str:
    return Path(secure_cluster.password_file).read_text().strip()


def settings(state: ClusterState, password: str, **overrides) -> ConnectionSettings:
    base = dict(url=state.url, user=state.user, password=password, ca_certs=state.ca_file)
    return ConnectionSettings(**{**base, **overrides})


def test_password_file_is_private(secure_cluster: ClusterState) -> None:
    assert Path(secure_cluster.password_file).stat().st_mode & 0o077 == 0
    assert secure_cluster.url.startswith("https://")


def test_ingest_over_verified_tls_with_basic_auth(secure_cluster, password, tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 10)
    env = {"MILCO_OS_USER": secure_cluster.user, "MILCO_OS_PASSWORD": password,
           "MILCO_OS_CA_CERTS": secure_cluster.ca_file}
    result = CliRunner(env=env).invoke(main, [
        "ingest", "--index", "secure-docs", "--input", str(tmp_path / "c.jsonl"),
        "--url", secure_cluster.url])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["indexed"] == 10
    assert password not in result.output


def test_a_wrong_ca_is_refused(secure_cluster, password, tmp_path) -> None:
    other_ca = make_certificates(tmp_path / "other")
    engine = open_engine(settings(secure_cluster, password, ca_certs=str(other_ca)))
    with pytest.raises(EngineError) as refused:
        engine.index_exists("anything")
    assert "certificate verify failed" in str(refused.value).lower()
    assert password not in str(refused.value)


def test_verification_is_on_by_default(secure_cluster, password) -> None:
    engine = open_engine(settings(secure_cluster, password, ca_certs=None))
    with pytest.raises(EngineError, match="(?i)certificate"):
        engine.index_exists("anything")


def test_wrong_credentials_fail_clearly(secure_cluster, tmp_path) -> None:
    write_corpus(tmp_path / "c.jsonl", 2)
    wrong = "not-the-password-" + "x" * 8
    env = {"MILCO_OS_USER": "admin", "MILCO_OS_PASSWORD": wrong,
           "MILCO_OS_CA_CERTS": secure_cluster.ca_file}
    result = CliRunner(env=env).invoke(main, [
        "ingest", "--index", "secure-docs", "--input", str(tmp_path / "c.jsonl"),
        "--url", secure_cluster.url, "--quiet"])
    assert result.exit_code != 0
    assert "401" in result.output or "nauthorized" in result.output
    assert wrong not in result.output


def test_secrets_never_appear_in_repr_or_help(secure_cluster, password) -> None:
    assert password not in repr(settings(secure_cluster, password))
    for command in (["ingest", "--help"], ["cluster", "up", "--help"]):
        help_text = CliRunner(env={"MILCO_OS_PASSWORD": password}).invoke(main, command).output
        assert password not in help_text
