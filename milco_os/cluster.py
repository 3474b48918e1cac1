"""A real local OpenSearch cluster for tests, CI and users without one.

Without Docker, OpenSearch is assembled from artifacts that OpenSearch publishes
to Maven Central: the ``integ-test-zip`` server (no bundled JDK, only the
transport module) plus the ``mapper-extras`` module (``rank_features``) and the
``analysis-common`` module (language analyzers), each a published jar given the
``plugin-descriptor.properties`` it has in the full distribution. Downloads are
verified against Maven's SHA-1 and cached under ``~/.cache/milco-os``.

Nodes run in their own process session, bound to 127.0.0.1 on free ports, as
an unprivileged user when started as root (OpenSearch refuses to run as root).
Their pids are recorded in a state file so that :meth:`LocalCluster.down` stops
exactly what :meth:`LocalCluster.up` started.

>>> cluster = LocalCluster(name="doc-example")
>>> cluster.url() is None  # nothing started under that name
True
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from milco_os import cluster_security as security

OPENSEARCH_VERSION = "2.19.6"
MAVEN_URL = "https://repo1.maven.org/maven2"

# Modules that OpenSearch publishes as plain jars: (artifact, plugin class, description).
MODULES = (
    ("mapper-extras-client", "mapper-extras", "org.opensearch.index.mapper.MapperExtrasPlugin",
     "Adds advanced field mappers (rank_feature, rank_features, ...)"),
    ("analysis-common", "analysis-common", "org.opensearch.analysis.common.CommonAnalysisPlugin",
     "Adds the built-in language analyzers"),
)


class ClusterError(RuntimeError):
    """The local cluster could not be obtained, started, or stopped."""


def cache_home() -> Path:
    """``$MILCO_OS_HOME``, else ``~/.cache/milco-os``."""
    return Path(os.environ.get("MILCO_OS_HOME") or Path.home() / ".cache" / "milco-os")


def _run_root() -> Path:
    """Where node folders live; readable by the unprivileged user nodes run as."""
    if env := os.environ.get("MILCO_OS_RUN_DIR"):
        return Path(env)
    # Root's home is not readable by other users, so nodes started by root live in /var/tmp.
    return Path("/var/tmp/milco-os") if os.geteuid() == 0 else cache_home() / "run"


# ---------------------------------------------------------------- downloading


def _download(url: str, dest: Path) -> Path:
    """Fetch ``url`` to ``dest`` once, verified against Maven's ``.sha1`` file."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url + ".sha1", timeout=60) as resp:
            expected = resp.read().decode().split()[0].strip()
        tmp = dest.with_suffix(dest.suffix + ".part")
        digest = hashlib.sha1()
        with urllib.request.urlopen(url, timeout=600) as resp, tmp.open("wb") as out:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise ClusterError(f"cannot download {url}: {exc}") from None
    if digest.hexdigest() != expected:
        tmp.unlink(missing_ok=True)
        raise ClusterError(f"checksum mismatch for {url}: got {digest.hexdigest()}, "
                           f"Maven says {expected}")
    tmp.rename(dest)
    return dest


def _maven_url(group: str, artifact: str, version: str, ext: str) -> str:
    base = os.environ.get("MILCO_OS_MAVEN_URL", MAVEN_URL).rstrip("/")
    return f"{base}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.{ext}"


def install_opensearch(version: str = OPENSEARCH_VERSION, secure: bool = False) -> Path:
    """Download (once) and assemble OpenSearch ``version``; return its home folder.

    ``secure`` adds the security plugin (TLS and authentication).
    """
    home = _run_root() / "dist" / (f"opensearch-{version}" + ("-secure" if secure else ""))
    if (home / ".complete").exists():
        return home
    downloads = cache_home() / "downloads"
    zip_path = _download(
        _maven_url("org.opensearch.distribution.integ-test-zip", "opensearch", version, "zip"),
        downloads / f"opensearch-{version}.zip",
    )
    staging = home.with_name(home.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(staging)
        for info in archive.infolist():  # zipfile drops the executable bits
            mode = info.external_attr >> 16
            if mode:
                (staging / info.filename).chmod(mode & 0o777)
    root = next(staging.iterdir())
    for artifact, name, classname, description in MODULES:
        jar = _download(_maven_url("org.opensearch.plugin", artifact, version, "jar"),
                        downloads / f"{artifact}-{version}.jar")
        module = root / "modules" / name
        module.mkdir(parents=True, exist_ok=True)
        shutil.copy(jar, module / jar.name)
        (module / "plugin-descriptor.properties").write_text(
            f"description={description}\nversion={version}\nname={name}\n"
            f"classname={classname}\njava.version=11\nopensearch.version={version}\n"
        )
    if secure:
        plugin = _download(_maven_url("org.opensearch.plugin", "opensearch-security",
                                      f"{version}.0", "zip"),
                           downloads / f"opensearch-security-{version}.0.zip")
        security.install_security_plugin(root, plugin, find_java())
    _make_world_readable(_run_root())
    shutil.rmtree(home, ignore_errors=True)
    root.rename(home)
    shutil.rmtree(staging)
    (home / ".complete").touch()
    return home


def _make_world_readable(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for p in (path, *path.parents):
        if p == Path("/") or p.stat().st_uid != os.geteuid():
            break
        p.chmod(p.stat().st_mode | 0o755)


# ---------------------------------------------------------------- java


def find_java(min_major: int = 11) -> Path:
    """The ``JAVA_HOME`` to run OpenSearch with (``OPENSEARCH_JAVA_HOME``, ``JAVA_HOME``, PATH)."""
    candidates = [os.environ.get("OPENSEARCH_JAVA_HOME"), os.environ.get("JAVA_HOME")]
    if java := shutil.which("java"):
        candidates.append(str(Path(java).resolve().parent.parent))
    for cand in filter(None, candidates):
        binary = Path(cand) / "bin" / "java"
        if binary.exists() and _java_major(binary) >= min_major:
            return Path(cand)
    raise ClusterError(f"no Java {min_major}+ found: install a JDK or set JAVA_HOME")


def _java_major(binary: Path) -> int:
    out = subprocess.run([str(binary), "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


# ---------------------------------------------------------------- nodes


@dataclass
class NodeState:
    name: str
    pid: int
    http_port: int
    transport_port: int
    folder: str


@dataclass
class ClusterState:
    name: str
    version: str
    runtime: str  # "local" or "docker"
    url: str
    nodes: list[NodeState] = field(default_factory=list)
    compose_file: str | None = None
    # Secure clusters: TLS with this CA, basic auth as this user with the password in this file.
    ca_file: str | None = None
    user: str | None = None
    password_file: str | None = None

    @classmethod
    def load(cls, path: Path) -> ClusterState | None:
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["nodes"] = [NodeState(**n) for n in data.get("nodes", [])]
        return cls(**data)

    @property
    def urls(self) -> list[str]:
        """Every node's HTTP URL (clients spread requests and fail over across them)."""
        scheme = "https" if self.ca_file else "http"
        return [f"{scheme}://127.0.0.1:{n.http_port}" for n in self.nodes] or [self.url]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user nodes run as when we are root (``MILCO_OS_RUN_AS``, default ``nobody``)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("MILCO_OS_RUN_AS", "nobody")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ClusterError(f"user {name!r} does not exist; set MILCO_OS_RUN_AS") from None


def _chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    for p in (path, *path.rglob("*")):
        os.chown(p, user.pw_uid, user.pw_gid)


def _http_json(url: str, state: ClusterState, timeout: float = 5.0) -> Any:
    """GET ``url`` of the cluster of ``state`` (with its CA and credentials if secure)."""
    request = urllib.request.Request(url)
    context = None
    if state.ca_file:
        context = ssl.create_default_context(cafile=state.ca_file)
        password = Path(state.password_file).read_text().strip()
        token = base64.b64encode(f"{state.user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
        return json.loads(resp.read())


ENVIRON_READS, ENVIRON_PAUSE_S = 5, 0.05


def _process_alive(pid: int, node_folder: str) -> bool:
    """Whether ``pid`` is still the node we started, not a process that reused its pid.

    The launcher script execs Java, so the command line changes; the environment
    (which names the node's config folder) survives the exec.
    """
    marker = f"OPENSEARCH_PATH_CONF={node_folder}/config".encode()
    for _ in range(ENVIRON_READS):
        # While a process execs (the launcher script execs Java) its environment briefly
        # reads as empty or partial, or the read fails with ESRCH: only a missing pid or
        # a zombie is final; anything else is looked at again.
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return True
        if not _pid_exists(pid) or _is_zombie(pid):
            return False
        time.sleep(ENVIRON_PAUSE_S)
    return False


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    return True


def _is_zombie(pid: int) -> bool:
    """Exited but not yet reaped (unknown, hence False, while /proc is unreadable)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


class LocalCluster:
    """One named local cluster: ``up``, ``down``, ``status``, ``url``."""

    def __init__(self, name: str = "default") -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ClusterError(f"invalid cluster name {name!r}")
        self.name = name
        self.state_file = cache_home() / "clusters" / f"{name}.json"

    # -- queries

    def state(self) -> ClusterState | None:
        return ClusterState.load(self.state_file)

    def url(self) -> str | None:
        """URL of this cluster's first node when it was started and still answers."""
        state = self.state()
        if state is None:
            return None
        try:
            _http_json(state.url + "/", state, timeout=2)
        except (OSError, ValueError):
            return None
        return state.url

    def hosts(self) -> list[str]:
        """URLs of this cluster's nodes that answer (empty when none does)."""
        state = self.state()
        alive = []
        for url in state.urls if state else []:
            try:
                _http_json(url + "/", state, timeout=2)
                alive.append(url)
            except (OSError, ValueError):
                continue
        return alive

    def status(self) -> dict[str, Any]:
        """Version, nodes and health of the running cluster."""
        state = self.state()
        if state is None:
            raise ClusterError(f"cluster {self.name!r} is not running (no state file)")
        try:
            root = _http_json(state.url + "/", state)
            health = _http_json(state.url + "/_cluster/health", state)
            nodes = _http_json(state.url + "/_nodes/plugins", state)["nodes"].values()
        except (OSError, ValueError) as exc:
            raise ClusterError(
                f"cluster {self.name!r} at {state.url} does not answer: {exc}") from None
        return {
            "url": state.url,
            "runtime": state.runtime,
            "secure": bool(state.ca_file),
            "distribution": root["version"].get("distribution", "elasticsearch"),
            "version": root["version"]["number"],
            "health": health["status"],
            "nodes": [
                {"name": n["name"], "modules": sorted(m["name"] for m in n.get("modules", []))}
                for n in nodes
            ],
        }

    # -- lifecycle

    def up(self, nodes: int = 1, version: str = OPENSEARCH_VERSION, heap: str = "512m",
           http_port: int | None = None, timeout: float = 180.0,
           settings: dict[str, Any] | None = None, secure: bool = False) -> ClusterState:
        """Start ``nodes`` OpenSearch nodes and wait until the cluster is green.

        ``settings`` are extra ``opensearch.yml`` settings for every node.
        ``secure`` runs OpenSearch with the security plugin (version
        :data:`~milco_os.cluster_security.SECURE_VERSION`): HTTPS with a private CA
        and basic auth as ``admin``; the CA file and password file are in the state.
        """
        if (url := self.url()) is not None:
            raise ClusterError(f"cluster {self.name!r} is already running at {url}")
        if nodes < 1:
            raise ClusterError("--nodes must be at least 1")
        version = security.SECURE_VERSION if secure else version
        home = install_opensearch(version, secure=secure)
        java_home = find_java(21 if version.startswith("3.") else 11)
        user = _unprivileged_user()
        folder = _run_root() / "clusters" / self.name
        shutil.rmtree(folder, ignore_errors=True)
        ports = [(http_port if i == 0 and http_port else _free_port(), _free_port())
                 for i in range(nodes)]
        names = [f"{self.name}-{i}" for i in range(nodes)]
        scheme = "https" if secure else "http"
        state = ClusterState(self.name, version, "local", f"{scheme}://127.0.0.1:{ports[0][0]}")
        node_settings = dict(settings or {})
        if secure:
            password_hash = self._secure_setup(state, home, java_home, folder)
            node_settings.update(security.node_settings())
        for i, (http, transport) in enumerate(ports):
            node_dir = folder / names[i]
            self._write_config(home, node_dir, names, ports, i, heap, node_settings)
            if secure:
                security.configure_node(node_dir / "config", folder / "certs", password_hash)
            _chown_tree(folder, user)
            pid = self._spawn(home, node_dir, java_home, user)
            state.nodes.append(NodeState(names[i], pid, http, transport, str(node_dir)))
            state.save(self.state_file)  # saved per node, so `down` can clean up a failed start
        try:
            self._wait_green(state, timeout)
        except ClusterError:
            self.down()
            raise
        return state

    def down(self, timeout: float = 30.0) -> list[int]:
        """Stop the nodes this cluster started (by recorded pid); return the pids stopped."""
        state = self.state()
        if state is None:
            return []
        if state.runtime == "docker":
            subprocess.run(["docker", "compose", "-f", str(state.compose_file), "down"],
                           check=True)
            self.state_file.unlink()
            return []
        if state.password_file:
            Path(state.password_file).unlink(missing_ok=True)
        alive = [n for n in state.nodes if _process_alive(n.pid, n.folder)]
        for node in alive:
            os.killpg(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while remaining := [n for n in alive if _process_alive(n.pid, n.folder)]:
            if time.monotonic() > deadline:
                for node in remaining:
                    os.killpg(node.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        self.state_file.unlink()
        return [n.pid for n in alive]

    # -- internals

    def _secure_setup(self, state: ClusterState, home: Path, java_home: Path, folder: Path
                      ) -> str:
        """Make the certificates and the admin password; return the password's hash."""
        ca_file = security.make_certificates(folder / "certs")
        password_file = self.state_file.with_suffix(".password")
        password_hash = security.bcrypt_hash(home, java_home,
                                             security.new_password(password_file))
        state.ca_file, state.user = str(ca_file), security.ADMIN_USER
        state.password_file = str(password_file)
        return password_hash

    @staticmethod
    def _write_config(home: Path, node_dir: Path, names: list[str],
                      ports: list[tuple[int, int]], index: int, heap: str,
                      extra: dict[str, Any]) -> None:
        config = node_dir / "config"
        shutil.copytree(home / "config", config)
        (node_dir / "data").mkdir()
        (node_dir / "logs").mkdir()
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
            settings["cluster.initial_cluster_manager_nodes"] = names
        settings.update(extra)
        (config / "opensearch.yml").write_text(json.dumps(settings, indent=1))  # JSON is YAML
        (config / "jvm.options.d" / "heap.options").write_text(f"-Xms{heap}\n-Xmx{heap}\n")
        # The launcher runs from the (read-only) distribution folder, so the relative
        # log and dump paths in jvm.options must point into the node's own folder.
        jvm = (config / "jvm.options").read_text()
        jvm = jvm.replace("file=logs/", f"file={node_dir}/logs/")
        jvm = jvm.replace("ErrorFile=logs/", f"ErrorFile={node_dir}/logs/")
        jvm = jvm.replace("HeapDumpPath=data", f"HeapDumpPath={node_dir}/data")
        (config / "jvm.options").write_text(jvm)

    @staticmethod
    def _spawn(home: Path, node_dir: Path, java_home: Path,
               user: pwd.struct_passwd | None) -> int:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "OPENSEARCH_JAVA_HOME": str(java_home),
            "OPENSEARCH_PATH_CONF": str(node_dir / "config"),
            "HOME": str(node_dir),
        }
        with open(node_dir / "logs" / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                [str(home / "bin" / "opensearch")], cwd=node_dir, env=env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
            )
        return proc.pid

    def _wait_green(self, state: ClusterState, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        query = f"/_cluster/health?wait_for_status=green&wait_for_nodes={len(state.nodes)}"
        while time.monotonic() < deadline:
            for node in state.nodes:
                if not _process_alive(node.pid, node.folder):
                    raise ClusterError(f"node {node.name} exited during start-up:\n"
                                       + _log_tail(Path(node.folder)))
            try:
                health = _http_json(state.url + query + "&timeout=2s", state, timeout=5)
                if health.get("status") == "green" and not health.get("timed_out"):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise ClusterError(f"cluster {self.name!r} not green after {timeout:.0f}s:\n"
                           + _log_tail(Path(state.nodes[0].folder)))


def _log_tail(node_dir: Path, lines: int = 20) -> str:
    log_file = node_dir / "logs" / "stdout.log"
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
