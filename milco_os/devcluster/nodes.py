"""Node processes and the recorded state of a running local cluster."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import socket
import ssl
import time
import urllib.request
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from milco_os.devcluster.errors import ClusterError


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
    distribution: str = "opensearch"  # files written before Elasticsearch existed lack it

    @classmethod
    def load(cls, path: Path) -> ClusterState | None:
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["nodes"] = [NodeState(**n) for n in data.get("nodes", [])]
        return cls(**data)

    @property
    def urls(self) -> list[str]:
        """Every node's HTTP URL (clients spread requests and fail over across them)."""
        scheme = "https" if self.ca_file else "http"
        return [f"{scheme}://127.0.0.1:{n.http_port}" for n in self.nodes] or [self.url]

    @property
    def conf_env(self) -> str:
        return "ES_PATH_CONF" if self.distribution == "elasticsearch" else "OPENSEARCH_PATH_CONF"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port.

    SO_REUSEADDR as the JVM sets it: a port whose old connections are in TIME-WAIT (a
    cluster just stopped) is free to a server, so ``up`` after ``down`` keeps its ports.
    """
    usable = preferred is not None and 0 < preferred < 65536  # a state file from before checks
    for port in (preferred, 0) if usable else (0,):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise ClusterError("no free port on 127.0.0.1")


def unprivileged_user() -> pwd.struct_passwd | None:
    """The user nodes run as when we are root (``MILCO_OS_RUN_AS``, default ``nobody``)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("MILCO_OS_RUN_AS", "nobody")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ClusterError(f"user {name!r} does not exist; set MILCO_OS_RUN_AS") from None


def chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    for p in (path, *path.rglob("*")):
        os.chown(p, user.pw_uid, user.pw_gid)


def http_json(url: str, state: ClusterState, timeout: float = 5.0) -> Any:
    """GET ``url`` of the cluster of ``state`` (with its CA and credentials if secure)."""
    request = urllib.request.Request(url)
    context = None
    if state.ca_file:
        context = ssl.create_default_context(cafile=state.ca_file)
        password = Path(state.password_file or "").read_text().strip()
        token = base64.b64encode(f"{state.user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
        return json.loads(resp.read())


ENVIRON_READS, ENVIRON_PAUSE_S = 5, 0.05


def process_alive(pid: int, node_folder: str, conf_env: str = "OPENSEARCH_PATH_CONF") -> bool:
    """Whether ``pid`` is still the node we started, not a process that reused its pid.

    The launcher script execs Java, so the command line changes; the environment
    (which names the node's config folder in ``conf_env``) survives the exec.
    """
    marker = f"{conf_env}={node_folder}/config".encode()
    for _ in range(ENVIRON_READS):
        # While a process execs (the launcher script execs Java) its environment briefly
        # reads as empty or partial, or the read fails with ESRCH: only a missing pid or
        # a zombie is final; anything else is looked at again.
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return True
        if not pid_exists(pid) or is_zombie(pid):
            return False
        time.sleep(ENVIRON_PAUSE_S)
    return False


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    return True


def is_zombie(pid: int) -> bool:
    """Exited but not yet reaped (unknown, hence False, while /proc is unreadable)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def log_tail(node_dir: Path, lines: int = 20) -> str:
    log_file = node_dir / "logs" / "stdout.log"
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
