"""The local cluster: a real node with linear rank_features, data that survives `down`/`up`
and a node's death, the default cluster of every command, one-line refusals."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from _ingest_helpers import write_corpus
from click.testing import CliRunner, Result

from milco_os.cli import main
from milco_os.devcluster import ClusterError, LocalCluster, distribution, docker, java
from milco_os.devcluster.artifacts import cache_home
from milco_os.devcluster.nodes import free_port, process_alive

pytestmark = pytest.mark.cluster

NINE_BIT_REL = 2.0**-8  # FeatureField keeps 9 significant bits: relative error < 2^-8


def test_node_is_opensearch_with_mapper_extras(cluster_url: str) -> None:
    with urllib.request.urlopen(cluster_url + "/") as resp:
        root = json.load(resp)
    assert root["version"]["distribution"] == "opensearch"
    with urllib.request.urlopen(cluster_url + "/_nodes/plugins") as resp:
        modules = {m["name"] for n in json.load(resp)["nodes"].values() for m in n["modules"]}
    assert {"mapper-extras", "analysis-common"} <= modules


def test_linear_rank_feature_score_is_weight_times_boost(os_client, index_name: str) -> None:
    os_client.indices.create(
        index=index_name, body={"mappings": {"properties": {"pivot": {"type": "rank_features"}}}}
    )
    os_client.index(index=index_name, id="a", body={"pivot": {"dog": 1.37, "cat": 0.2}})
    os_client.index(index=index_name, id="b", body={"pivot": {"dog": 0.41}}, refresh=True)
    boost = 2.5
    body = {"query": {"rank_feature": {"field": "pivot.dog", "linear": {}, "boost": boost}}}
    hits = os_client.search(index=index_name, body=body)["hits"]["hits"]
    scores = {h["_id"]: h["_score"] for h in hits}
    assert scores.keys() == {"a", "b"}
    for doc, weight in (("a", 1.37), ("b", 0.41)):
        assert scores[doc] == pytest.approx(weight * boost, rel=NINE_BIT_REL)


@pytest.fixture
def own_home(tmp_path, monkeypatch) -> dict[str, str]:
    """State files of its own (the downloads the session fetched are reused) and no URL:
    the environment of a user who only ran `milco-os cluster up`."""
    real_downloads = cache_home() / "downloads"
    home = tmp_path / "home"
    home.mkdir()
    if real_downloads.exists():
        (home / "downloads").symlink_to(real_downloads)
    env = {"MILCO_OS_HOME": str(home), "MILCO_OS_LOCAL_PATH": str(tmp_path / "local")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MILCO_OS_URL", raising=False)
    return env


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def count(url: str, index: str) -> int:
    with urllib.request.urlopen(f"{url}/{index}/_count") as resp:
        return json.load(resp)["count"]


def test_a_cluster_keeps_its_data_and_is_the_default(own_home, tmp_path, monkeypatch) -> None:
    """`down`/`up` and a node's SIGTERM keep every index; without a URL, commands use the
    cluster `up` started, and when it does not answer they say so instead of writing
    elsewhere; `destroy` deletes the data on purpose."""
    name = f"lifecycle-{os.getpid()}"
    monkeypatch.setenv("MILCO_OS_CLUSTER", name)  # which cluster `cluster up` users mean
    write_corpus(tmp_path / "c.jsonl", 5)
    ingest = ["ingest", "--index", "keep", "--input", str(tmp_path / "c.jsonl"), "--quiet"]
    up = cli("cluster", "up", "--name", name, "--heap", "256m", "--runtime", "local")
    assert up.exit_code == 0, up.output
    assert "OpenSearch 2.19.6" in up.stderr
    cluster = LocalCluster(name)
    try:
        url = up.stdout.strip().splitlines()[-1]
        done = cli(*ingest)
        assert done.exit_code == 0, done.output
        assert "into opensearch" in done.stderr and count(url, "keep") == 5
        assert not Path(own_home["MILCO_OS_LOCAL_PATH"]).exists()  # not the local engine

        node = cluster.state().nodes[0]
        os.killpg(node.pid, signal.SIGSTOP)  # a node too busy to answer
        try:
            busy = cli(*ingest)
        finally:
            os.killpg(node.pid, signal.SIGCONT)
        # The stopped node is met by the cluster's liveness probe ("does not answer") or,
        # where that probe was answered first (seen once on a loaded machine), by the
        # engine's first request ("timed out", naming the engine): one clear line either way.
        assert busy.exit_code != 0
        assert "does not answer" in busy.output or (
            "timed out" in busy.output and f"[engine: {url}]" in busy.output)
        assert "Traceback" not in busy.output
        assert not Path(own_home["MILCO_OS_LOCAL_PATH"]).exists()

        assert cli("cluster", "down", "--name", name).exit_code == 0
        again = cli("cluster", "up", "--name", name, "--heap", "256m", "--runtime", "local")
        assert again.exit_code == 0, again.output
        url = again.stdout.strip().splitlines()[-1]
        assert count(url, "keep") == 5

        node = cluster.state().nodes[0]
        os.killpg(node.pid, signal.SIGTERM)
        while process_alive(node.pid, node.folder):
            time.sleep(0.2)
        third = cli("cluster", "up", "--name", name, "--heap", "256m", "--runtime", "local")
        assert third.exit_code == 0, third.output
        assert count(third.stdout.strip().splitlines()[-1], "keep") == 5

        other = cli("cluster", "up", "--name", name, "--runtime", "local")
        assert other.exit_code != 0 and "already running" in other.output
    finally:
        destroyed = cli("cluster", "destroy", "--name", name)
    assert destroyed.exit_code == 0 and "data deleted" in destroyed.output
    assert not cluster.folder.exists() and cluster.state() is None
    assert cluster.down() == []


@pytest.mark.parametrize(("args", "message"), [
    (["--heap", "lots"], "--heap 'lots': expected a JVM size such as 512m or 2g"),
    (["--heap", "0m"], "--heap '0m'"),
    (["--secure", "--version", "2.19.6"], "--secure runs OpenSearch 2.11.1"),
    (["--distribution", "elasticsearch", "--secure"], "has no secure profile"),
    (["--distribution", "elasticsearch", "--version", "9.3.0"], "use one of 8.11.3"),
    (["--version", "3.1.0"], "3.x starts at 3.3.0"),
    (["--version", "lots"], "expected MAJOR.MINOR.PATCH"),
    (["--nodes", "0"], "--nodes must be at least 1"),
    (["--runtime", "docker", "--secure"], "--secure cannot be honoured by the docker runtime"),
    (["--runtime", "docker", "--heap", "1g"], "--heap cannot be honoured by the docker runtime"),
    (["--runtime", "docker", "--port", "9200"], "--port cannot be honoured"),
    (["--runtime", "docker", "--setting", "a=b"], "--setting cannot be honoured"),
    (["--runtime", "docker", "--version", "2.19.6"], "use --runtime local"),
    (["--runtime", "local", "--port", "70000"], "--port 70000: expected a port in 1024-65535"),
    (["--runtime", "local", "--port", "-1"], "--port -1: expected a port in 1024-65535"),
    (["--runtime", "local", "--port", "22"], "--port 22: expected a port in 1024-65535"),
])
def test_bad_cluster_options_get_one_line(own_home, args: list[str], message: str) -> None:
    result = cli("cluster", "up", "--name", f"refused-{os.getpid()}", *args)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and message in result.output
    assert "Exception" not in result.output and "at java" not in result.output
    assert not LocalCluster(f"refused-{os.getpid()}").folder.exists()  # nothing was started


def test_data_made_another_way_is_not_started_on(own_home) -> None:
    cluster = LocalCluster(f"layout-{os.getpid()}")
    try:
        cluster.folder.mkdir(parents=True)
        cluster.layout_file.write_text(json.dumps({
            "distribution": "elasticsearch", "version": "9.2.4", "nodes": 1, "secure": False,
            "ports": [[None, None]], "started": True}))
        result = cli("cluster", "up", "--name", cluster.name, "--runtime", "local")
        assert result.exit_code == 2
        assert "holds data made with distribution elasticsearch, version 9.2.4" in result.output
        assert "cluster destroy" in result.output and cluster.layout_file.exists()
    finally:
        cluster.destroy()


def test_a_missing_jdk_says_what_to_install(monkeypatch, tmp_path) -> None:
    for variable in java.ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(java, "JDK_FOLDERS", (str(tmp_path / "none" / "*"),))
    with pytest.raises(ClusterError, match="apt-get install openjdk-21-jdk-headless"):
        distribution("opensearch", "3.3.2").java_home()


def test_a_jdk_is_found_for_every_distribution() -> None:
    """This machine has JDKs only in the system's JVM folder, not on JAVA_HOME."""
    for name, version, low, high in (("opensearch", "2.19.6", 11, 23),
                                     ("opensearch", "3.3.2", 21, None),
                                     ("elasticsearch", "8.11.3", 17, 23),
                                     ("elasticsearch", "9.2.4", 21, None)):
        major = java.java_major(distribution(name, version).java_home())
        assert low <= major and (high is None or major <= high), (name, version, major)


def test_compose_images_are_versions_the_adapters_support() -> None:
    compose = Path(__file__).resolve().parents[1] / "docker" / "compose.yml"
    services = docker.services(compose)
    assert {(s.distribution, s.nodes) for s in services} >= {
        ("opensearch", 1), ("opensearch", 3), ("elasticsearch", 1)}
    assert any(s.version.startswith("3.") for s in services if s.distribution == "opensearch")
    for service in services:
        distribution(service.distribution, service.version)  # refuses what is not supported
    spec = yaml.safe_load(compose.read_text())["services"]
    images = {s["image"] for s in spec.values() if "image" in s}
    for service in services:  # every node of a multi-node service runs the same image
        assert sum(service.version in image for image in images) >= 1
    picked = docker.pick(compose, "elasticsearch", None, 1)
    assert picked.port == 9202 and picked.version == "9.2.4"


def test_a_node_that_execs_is_never_taken_for_dead(tmp_path) -> None:
    """The launcher script execs Java; mid-exec, /proc/<pid>/environ reads empty or partial,
    which once made start-up report a healthy node as exited."""
    import subprocess
    import time

    folder = tmp_path / "node"
    env = {"PATH": "/usr/bin:/bin", "OPENSEARCH_PATH_CONF": f"{folder}/config", "N": "0"}
    # re-exec itself 400 times, then sleep: hundreds of exec windows
    script = ('n=$N; if [ "$n" -lt 400 ]; then N=$((n+1)) exec bash -c "$0" "$0" "$1"; fi; '
              'echo "$n" > "$1"; exec sleep 0.5')
    generations = tmp_path / "generations"
    proc = subprocess.Popen(["bash", "-c", script, script, str(generations)], env=env,
                            stdin=subprocess.DEVNULL)
    verdicts = []
    while proc.poll() is None:
        verdicts.append(process_alive(proc.pid, str(folder)))
    assert generations.read_text().strip() == "400"
    assert verdicts.count(False) <= 1  # only a read after the last exit may say so
    assert len(verdicts) > 100
    assert not process_alive(proc.pid, str(folder))
    other = subprocess.Popen(["sleep", "1"], env={**env, "OPENSEARCH_PATH_CONF": "/elsewhere"})
    started = time.monotonic()
    assert not process_alive(other.pid, str(folder))  # a reused pid is not our node
    assert time.monotonic() - started < 1.0
    other.kill()
    other.wait()


def test_a_port_in_use_is_refused_before_anything_starts(own_home) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("cluster", "up", "--name", f"busy-{os.getpid()}", "--runtime", "local",
                     "--port", str(port))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: --port {port}: in use on 127.0.0.1; choose " \
        "another or omit --port"
    assert not LocalCluster(f"busy-{os.getpid()}").folder.exists()


def test_a_port_whose_connections_wait_in_time_wait_is_free_again() -> None:
    """After `down`, the old HTTP port still has TIME-WAIT sockets; `up` must keep it."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM's servers do
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end goes to TIME-WAIT
        client.close()
    time.sleep(0.2)
    with socket.socket() as plain, pytest.raises(OSError):  # a bind without SO_REUSEADDR
        plain.bind(("127.0.0.1", port))
    assert free_port(port) == port


def test_a_cluster_named_by_the_environment_but_not_running_is_an_error(own_home, monkeypatch,
                                                                       tmp_path) -> None:
    """Never a silent switch to the local engine when the user asked for a named cluster."""
    monkeypatch.setenv("MILCO_OS_CLUSTER", f"gone-{os.getpid()}")
    write_corpus(tmp_path / "c.jsonl", 3)  # pre-encoded vectors: no model needed
    result = cli("ingest", "--index", "news", "--input", str(tmp_path / "c.jsonl"), "--quiet")
    assert result.exit_code != 0, result.output
    assert f"MILCO_OS_CLUSTER names the local cluster 'gone-{os.getpid()}', which is not " \
        "running" in result.output
    assert not Path(own_home["MILCO_OS_LOCAL_PATH"]).exists()  # nothing written locally
