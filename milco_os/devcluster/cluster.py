"""One named local cluster of any :mod:`~milco_os.devcluster.distributions` class.

Nodes run in their own process session, bound to 127.0.0.1, as an unprivileged
user when started as root (both servers refuse to run as root). Their pids are
recorded in a state file, so :meth:`LocalCluster.down` stops exactly what
:meth:`LocalCluster.up` started. Node folders (data included) outlive ``down``
and a node's death: the next ``up`` with the same name starts on the same data,
on the same ports when they are free; :meth:`LocalCluster.destroy` (or
``up(reset=True)``) deletes them on purpose.

>>> LocalCluster(name="doc-example").url() is None  # nothing started under that name
True
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from milco_os.devcluster import security
from milco_os.devcluster.artifacts import cache_home, run_root
from milco_os.devcluster.distributions import Distribution, distribution
from milco_os.devcluster.errors import ClusterError, ClusterOptionError
from milco_os.devcluster.nodes import (
    ClusterState,
    NodeState,
    chown_tree,
    free_port,
    http_json,
    log_tail,
    process_alive,
    unprivileged_user,
)

HEAP = re.compile(r"[1-9]\d*[kKmMgG]")


def check_heap(heap: str) -> str:
    """``heap`` when it is a JVM size such as ``512m`` or ``2g``, else a one-line error."""
    if not HEAP.fullmatch(heap or ""):
        raise ClusterOptionError(f"--heap {heap!r}: expected a JVM size such as 512m or 2g")
    return heap


# Ports below 1024 need root, and nodes run unprivileged; above 65535 there are none.
PORT_RANGE = range(1024, 65536)


def check_port(port: int | None) -> int | None:
    """``port`` when a node can listen on it (1024-65535 and free now), else a one-line error."""
    if port is None:
        return None
    if port not in PORT_RANGE:
        raise ClusterOptionError(f"--port {port}: expected a port in {PORT_RANGE.start}-"
                                 f"{PORT_RANGE.stop - 1} (nodes run unprivileged)")
    if free_port(port) != port:
        raise ClusterOptionError(f"--port {port}: in use on 127.0.0.1; choose another or omit "
                                 "--port")
    return port


class LocalCluster:
    """One named local cluster: ``up``, ``down``, ``destroy``, ``status``, ``url``."""

    def __init__(self, name: str = "default") -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ClusterOptionError(f"invalid cluster name {name!r}: use letters, digits, "
                                     "'.', '_' and '-'")
        self.name = name
        self.state_file = cache_home() / "clusters" / f"{name}.json"
        self.password_file = self.state_file.with_suffix(".password")
        self.folder = run_root() / "clusters" / name
        self.layout_file = self.folder / "layout.json"

    # -- queries

    def state(self) -> ClusterState | None:
        return ClusterState.load(self.state_file)

    def url(self) -> str | None:
        """URL of this cluster's first node when it was started and still answers."""
        state = self.state()
        return state.url if state is not None and _answers(state.url, state) else None

    def hosts(self, timeout: float = 10.0) -> list[str]:
        """URLs of this cluster's nodes that answer (empty when none does)."""
        state = self.state()
        return [u for u in (state.urls if state else []) if _answers(u, state, timeout)]

    def status(self) -> dict[str, Any]:
        """Distribution, version, nodes and health of the running cluster."""
        state = self.state()
        if state is None:
            raise ClusterError(f"cluster {self.name!r} is not running (no state file)")
        try:
            health = http_json(state.url + "/_cluster/health", state)
            nodes = list(http_json(state.url + "/_nodes/plugins", state)["nodes"].values())
        except (OSError, ValueError) as exc:
            raise ClusterError(
                f"cluster {self.name!r} at {state.url} does not answer: {exc}") from None
        return {
            "url": state.url,
            "runtime": state.runtime,
            "secure": bool(state.ca_file),
            "distribution": state.distribution,
            "version": nodes[0]["version"] if nodes else state.version,
            "health": health["status"],
            "nodes": [
                {"name": n["name"], "modules": sorted(m["name"] for m in n.get("modules", []))}
                for n in nodes
            ],
        }

    # -- lifecycle

    def up(self, nodes: int = 1, dist: Distribution | None = None, heap: str = "512m",
           http_port: int | None = None, timeout: float = 600.0,
           settings: dict[str, Any] | None = None, secure: bool = False,
           reset: bool = False) -> ClusterState:
        """Start ``nodes`` nodes of ``dist`` (default OpenSearch 2.19.6) and wait until
        the cluster is green (yellow when it restarts on existing data).

        ``settings`` are extra settings for every node's config file. ``secure``
        runs OpenSearch :data:`~milco_os.devcluster.security.SECURE_VERSION` with
        the security plugin: HTTPS with a private CA and basic auth as ``admin``;
        the CA and password files are in the state. ``reset`` deletes the data of
        an earlier run under this name first.
        """
        check_heap(heap)
        if nodes < 1:
            raise ClusterOptionError("--nodes must be at least 1")
        self._refuse_if_running()
        check_port(http_port)
        dist = dist or distribution("opensearch", security.SECURE_VERSION if secure else None)
        dist.check_secure(secure)
        if reset:
            self.destroy()
        layout = self._layout(dist, nodes, secure)
        home = dist.install(secure=secure)
        java_home = dist.java_home()
        user = unprivileged_user()
        ports = [(http_port if i == 0 and http_port else free_port(old[0]), free_port(old[1]))
                 for i, old in enumerate(layout["ports"])]
        names = [f"{self.name}-{i}" for i in range(nodes)]
        scheme = "https" if secure else "http"
        state = ClusterState(self.name, dist.version, "local", f"{scheme}://127.0.0.1:{ports[0][0]}",
                             distribution=dist.name)
        node_settings = {**dist.node_settings(nodes == 1), **(settings or {})}
        if secure:
            password_hash = self._secure_setup(state, home, java_home)
            node_settings.update(security.node_settings())
        first_start = not layout["started"]
        self._save_layout({**layout, "ports": ports})
        for i, (http, _) in enumerate(ports):
            node_dir = self.folder / names[i]
            _write_config(dist, home, node_dir, names, ports, i, heap, node_settings, first_start)
            if secure:
                security.configure_node(node_dir / "config", self.folder / "certs", password_hash)
            chown_tree(self.folder, user)
            pid = _spawn(dist, home, node_dir, java_home, user)
            state.nodes.append(NodeState(names[i], pid, http, ports[i][1], str(node_dir)))
            state.save(self.state_file)  # saved per node, so `down` can clean up a failed start
        try:
            self._wait(state, timeout, "green" if first_start else "yellow")
        except ClusterError:
            self.down()
            raise
        self._save_layout({**layout, "ports": ports, "started": True})
        return state

    def down(self, timeout: float = 60.0) -> list[int]:
        """Stop the nodes this cluster started (by recorded pid); return the pids stopped.
        Their data stays for the next :meth:`up`."""
        state = self.state()
        if state is None:
            return []
        if state.runtime == "docker":
            subprocess.run(["docker", "compose", "-f", str(state.compose_file), "stop"],
                           check=True)
            self.state_file.unlink()
            return []
        alive = [n for n in state.nodes if process_alive(n.pid, n.folder, state.conf_env)]
        for node in alive:
            os.killpg(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while remaining := [n for n in alive if process_alive(n.pid, n.folder, state.conf_env)]:
            if time.monotonic() > deadline:
                for node in remaining:
                    os.killpg(node.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        self.state_file.unlink()
        return [n.pid for n in alive]

    def destroy(self) -> bool:
        """Stop the cluster and delete its data and password; whether there was any."""
        self.down()
        existed = self.folder.exists() or self.password_file.exists()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.password_file.unlink(missing_ok=True)
        return existed

    # -- internals

    def _refuse_if_running(self) -> None:
        state = self.state()
        if state is None:
            return
        if state.runtime == "docker":
            if _answers(state.url, state):
                raise ClusterError(f"cluster {self.name!r} is already running at {state.url}")
            return
        alive = [n for n in state.nodes if process_alive(n.pid, n.folder, state.conf_env)]
        if alive:
            raise ClusterError(f"cluster {self.name!r} is already running ({len(alive)} of "
                               f"{len(state.nodes)} node(s) alive at {state.url}); "
                               "`cluster down` it first")
        self.state_file.unlink()  # every node died (killed, crashed): a stale record

    def _layout(self, dist: Distribution, nodes: int, secure: bool) -> dict[str, Any]:
        """What the data on disk was made with; a different request would not start on it."""
        wanted = {"distribution": dist.name, "version": dist.version, "nodes": nodes,
                  "secure": secure}
        if not self.layout_file.exists():
            # Folders from before layouts were recorded held OpenSearch data: keep it.
            legacy = len(list(self.folder.glob(f"{self.name}-*/data")))
            started = legacy == nodes and dist.name == "opensearch"
            if not started:
                shutil.rmtree(self.folder, ignore_errors=True)  # a start that never got green
            return {**wanted, "ports": [(None, None)] * nodes, "started": started}
        layout = json.loads(self.layout_file.read_text())
        differs = {k: (layout[k], v) for k, v in wanted.items() if layout.get(k) != v}
        if differs:
            was = ", ".join(f"{k} {old}" for k, (old, _) in differs.items())
            raise ClusterOptionError(
                f"cluster {self.name!r} holds data made with {was}: start it the same way, "
                f"use another --name, or delete its data with `milco-os cluster destroy "
                f"--name {self.name}` (or `up --reset`)")
        return layout

    def _save_layout(self, layout: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.layout_file.write_text(json.dumps(layout, indent=1))

    def _secure_setup(self, state: ClusterState, home: Path, java_home: Path) -> str:
        """The certificates and the admin password (made once, kept with the data, since
        the security index remembers the first password); return the password's hash."""
        certs = self.folder / "certs"
        ca_file = certs / "ca.pem" if (certs / "node.pem").exists() else \
            security.make_certificates(certs)
        if self.password_file.exists():
            password = self.password_file.read_text().strip()
        else:
            password = security.new_password(self.password_file)
        state.ca_file, state.user = str(ca_file), security.ADMIN_USER
        state.password_file = str(self.password_file)
        return security.bcrypt_hash(home, java_home, password)

    def _wait(self, state: ClusterState, timeout: float, status: str) -> None:
        deadline = time.monotonic() + timeout
        query = f"/_cluster/health?wait_for_status={status}&wait_for_nodes={len(state.nodes)}"
        good = ("green",) if status == "green" else ("green", "yellow")
        while time.monotonic() < deadline:
            for node in state.nodes:
                if not process_alive(node.pid, node.folder, state.conf_env):
                    raise ClusterError(f"node {node.name} exited during start-up:\n"
                                       + log_tail(Path(node.folder)))
            try:
                health = http_json(state.url + query + "&timeout=2s", state, timeout=5)
                if health.get("status") in good and not health.get("timed_out"):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise ClusterError(f"cluster {self.name!r} not {status} after {timeout:.0f}s:\n"
                           + log_tail(Path(state.nodes[0].folder)))


def _answers(url: str, state: ClusterState, timeout: float = 5.0) -> bool:
    # `GET /` answers 405 in Elasticsearch's integ-test distribution: ask for health instead.
    try:
        http_json(url + "/_cluster/health", state, timeout=timeout)
    except (OSError, ValueError):
        return False
    return True


def _write_config(dist: Distribution, home: Path, node_dir: Path, names: list[str],
                  ports: list[tuple[int, int]], index: int, heap: str, extra: dict[str, Any],
                  first_start: bool) -> None:
    """A fresh config folder for the node (its data and logs folders are kept)."""
    config = node_dir / "config"
    shutil.rmtree(config, ignore_errors=True)
    shutil.copytree(home / "config", config)
    (node_dir / "data").mkdir(parents=True, exist_ok=True)
    (node_dir / "logs").mkdir(exist_ok=True)
    http, transport = ports[index]
    settings = {
        "cluster.name": f"milco-os-{names[0].rsplit('-', 1)[0]}",
        "node.name": names[index],
        "path.data": str(node_dir / "data"),
        "path.logs": str(node_dir / "logs"),
        "network.host": "127.0.0.1",
        "http.port": http,
        "transport.port": transport,
        # Tests and laptops often run with little free disk; do not go read-only.
        "cluster.routing.allocation.disk.threshold_enabled": False,
    }
    if len(names) == 1:
        settings["discovery.type"] = "single-node"
    else:
        settings["discovery.seed_hosts"] = [f"127.0.0.1:{t}" for _, t in ports]
        if first_start:  # only a new cluster bootstraps; a restarted one already has a manager
            settings[dist.manager_setting] = names
    settings.update(extra)
    config_file = config / f"{dist.config_name}.yml"
    config_file.write_text(json.dumps(settings, indent=1))  # JSON is YAML
    (config / "jvm.options.d").mkdir(exist_ok=True)
    (config / "jvm.options.d" / "heap.options").write_text(f"-Xms{heap}\n-Xmx{heap}\n")
    # The launcher runs from the (read-only) distribution folder, so the relative
    # log and dump paths in jvm.options must point into the node's own folder.
    jvm = (config / "jvm.options").read_text()
    jvm = jvm.replace("file=logs/", f"file={node_dir}/logs/")
    jvm = jvm.replace("ErrorFile=logs/", f"ErrorFile={node_dir}/logs/")
    jvm = jvm.replace("HeapDumpPath=data", f"HeapDumpPath={node_dir}/data")
    (config / "jvm.options").write_text(jvm)


def _spawn(dist: Distribution, home: Path, node_dir: Path, java_home: Path,
           user: Any) -> int:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        dist.java_env: str(java_home),
        dist.conf_env: str(node_dir / "config"),
        "HOME": str(node_dir),
    }
    with open(node_dir / "logs" / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            [str(home / "bin" / dist.launcher)], cwd=node_dir, env=env, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
    return proc.pid
