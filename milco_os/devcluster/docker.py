"""The Docker runtime: the services of ``docker/compose.yml``, and what it cannot do.

The compose file pins one image per service; a request it cannot honour (a
version it does not pin, TLS, extra settings, heap, port, a reset) is refused
with one line instead of being dropped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from milco_os.devcluster.cluster import LocalCluster
from milco_os.devcluster.errors import ClusterError, ClusterOptionError
from milco_os.devcluster.nodes import ClusterState

IMAGES = {"opensearchproject/opensearch": "opensearch",
          "docker.elastic.co/elasticsearch/elasticsearch": "elasticsearch"}


@dataclass(frozen=True)
class Service:
    """A compose service that ``cluster up`` can start."""

    name: str
    distribution: str
    version: str
    nodes: int
    profile: str | None
    port: int


def services(compose_file: Path) -> list[Service]:
    """The startable services of ``compose_file``: one per node count, the first node each
    (the others of a multi-node profile start with it)."""
    try:
        spec = yaml.safe_load(compose_file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterError(f"cannot read compose file {compose_file}: {exc}") from None
    found = []
    for name, service in (spec.get("services") or {}).items():
        image, _, version = str(service.get("image", "")).partition(":")
        ports = service.get("ports") or []
        if image not in IMAGES or not ports:
            continue
        profiles = service.get("profiles") or [None]
        peers = [s for s in spec["services"].values()
                 if (s.get("profiles") or [None]) == profiles] if profiles[0] else [service]
        port = int(re.findall(r"(\d+):\d+$", str(ports[0]))[0])
        found.append(Service(name, IMAGES[image], version, len(peers), profiles[0], port))
    return found


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def refuse_unsupported(options: dict[str, Any]) -> None:
    """A one-line error naming the first option given that the Docker runtime ignores."""
    for option, value in options.items():
        if value not in (None, False, (), {}):
            raise ClusterOptionError(f"{option} cannot be honoured by the docker runtime "
                                     "(docker/compose.yml fixes it): use --runtime local")


def pick(compose_file: Path, distribution: str, version: str | None, nodes: int) -> Service:
    """The service that runs ``distribution`` (at ``version``, when given) on ``nodes`` nodes."""
    candidates = [s for s in services(compose_file) if s.distribution == distribution]
    fitting = [s for s in candidates if s.nodes == nodes and version in (None, s.version)]
    if not fitting:
        offered = ", ".join(f"{s.version} on {s.nodes} node(s)" for s in candidates) or "nothing"
        raise ClusterOptionError(
            f"{compose_file} runs {distribution} {offered}; for {version or 'its version'} on "
            f"{nodes} node(s) use --runtime local")
    return fitting[0]


def up(name: str, service: Service, compose_file: Path) -> ClusterState:
    profile = ["--profile", service.profile] if service.profile else []
    result = subprocess.run(["docker", "compose", "-f", str(compose_file), *profile, "up", "-d",
                             "--wait", service.name], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ClusterError(f"docker compose up {service.name} failed: {tail}")
    state = ClusterState(name, service.version, "docker", f"http://127.0.0.1:{service.port}",
                         compose_file=str(compose_file.resolve()),
                         distribution=service.distribution)
    state.save(LocalCluster(name).state_file)
    return state
