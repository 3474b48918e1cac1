"""The local OpenSearch node is real and serves rank_features with linear scoring."""

from __future__ import annotations

import json
import urllib.request

import pytest

from milco_os.devcluster import LocalCluster
from milco_os.devcluster.artifacts import cache_home
from milco_os.devcluster.nodes import process_alive

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


def test_down_stops_only_what_up_started(tmp_path, monkeypatch) -> None:
    """A cluster of its own: up prints a live URL, down leaves no node process behind."""
    real_downloads = cache_home() / "downloads"  # reuse what the session already fetched
    home = tmp_path / "home"
    home.mkdir()
    if real_downloads.exists():
        (home / "downloads").symlink_to(real_downloads)
    monkeypatch.setenv("MILCO_OS_HOME", str(home))
    cluster = LocalCluster(name="lifecycle")
    state = cluster.up(nodes=1, heap="256m")
    assert cluster.url() == state.url
    assert cluster.status()["health"] == "green"
    node = state.nodes[0]
    assert process_alive(node.pid, node.folder)
    assert cluster.down() == [node.pid]
    assert not process_alive(node.pid, node.folder)
    assert cluster.url() is None
    assert cluster.down() == []


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
