"""`milco-os cluster up|down|status`."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import click

from milco_os.cluster import OPENSEARCH_VERSION, ClusterError, ClusterState, LocalCluster

name_option = click.option("--name", default="default", show_default=True,
                           help="Name of the local cluster (several can run side by side).")


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@click.group()
def cluster() -> None:
    """Start, stop and inspect a local OpenSearch cluster."""


@cluster.command()
@name_option
@click.option("--nodes", default=1, show_default=True, help="Number of nodes (1 or more).")
@click.option("--version", "version", default=OPENSEARCH_VERSION, show_default=True,
              help="OpenSearch version (3.x needs Java 21).")
@click.option("--heap", default="512m", show_default=True, help="JVM heap per node.")
@click.option("--port", type=int, help="HTTP port of the first node [default: a free port].")
@click.option("--setting", "settings", multiple=True, metavar="KEY=VALUE",
              help="Extra opensearch.yml setting for every node (local runtime). Repeatable.")
@click.option("--secure", is_flag=True,
              help="TLS and basic auth (security plugin; OpenSearch 2.11.1, local runtime).")
@click.option("--runtime", type=click.Choice(["auto", "local", "docker"]), default="auto",
              show_default=True,
              help="`docker`: docker compose with docker/compose.yml; `local`: OpenSearch from "
                   "Maven Central, no Docker; `auto`: docker when a Docker engine answers.")
@click.option("--compose-file", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("docker/compose.yml"), show_default=True)
def up(name: str, nodes: int, version: str, heap: str, port: int | None,
       settings: tuple[str, ...], secure: bool, runtime: str, compose_file: Path) -> None:
    """Start a cluster, wait until it is green, and print its URL."""
    start = time.monotonic()
    extra = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--setting")
        extra[key] = value
    try:
        if runtime == "docker" or (runtime == "auto" and _docker_available()
                                   and compose_file.exists()):
            state = _docker_up(name, nodes, compose_file)
        else:
            click.echo(f"starting OpenSearch {version} ({nodes} node(s), heap {heap})...",
                       err=True)
            state = LocalCluster(name).up(nodes=nodes, version=version, heap=heap,
                                          http_port=port, settings=extra, secure=secure)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"cluster {name!r} is green after {time.monotonic() - start:.1f}s "
               f"({len(state.nodes) or nodes} node(s))", err=True)
    if state.ca_file:
        click.echo(f"connect with: MILCO_OS_USER={state.user} "
                   f"MILCO_OS_PASSWORD_FILE={state.password_file} "
                   f"MILCO_OS_CA_CERTS={state.ca_file}", err=True)
    click.echo(state.url)


def _docker_up(name: str, nodes: int, compose_file: Path) -> ClusterState:
    if not compose_file.exists():
        raise ClusterError(f"compose file {compose_file} not found (run from the repository)")
    profile = ["--profile", "cluster3"] if nodes > 1 else []
    service = "opensearch-node1" if nodes > 1 else "opensearch"
    subprocess.run(["docker", "compose", "-f", str(compose_file), *profile, "up", "-d",
                    "--wait", service], check=True)
    port = 9201 if nodes > 1 else 9200
    state = ClusterState(name, "docker", "docker", f"http://127.0.0.1:{port}",
                         compose_file=str(compose_file.resolve()))
    state.save(LocalCluster(name).state_file)
    return state


@cluster.command()
@name_option
def down(name: str) -> None:
    """Stop the cluster that `up` started (by recorded pid; nothing else)."""
    try:
        stopped = LocalCluster(name).down()
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"stopped {len(stopped)} node process(es) of cluster {name!r}"
               if stopped else f"cluster {name!r}: nothing was running")


@cluster.command()
@name_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(name: str, as_json: bool) -> None:
    """Show version, nodes and health."""
    try:
        info = LocalCluster(name).status()
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(f"{info['url']}  {info['distribution']} {info['version']}  "
               f"health={info['health']}  runtime={info['runtime']}")
    for node in info["nodes"]:
        click.echo(f"  node {node['name']}: modules {', '.join(node['modules'])}")
