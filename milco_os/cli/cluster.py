"""`milco-os cluster up|down|destroy|status`: the local development cluster."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from milco_os.core.errors import MilcoOSError
from milco_os.devcluster import (
    DISTRIBUTIONS,
    ClusterOptionError,
    ClusterState,
    LocalCluster,
    check_heap,
    check_port,
    distribution,
    docker,
)
from milco_os.devcluster.security import SECURE_VERSION

DEFAULT_HEAP = "512m"

name_option = click.option("--name", default="default", show_default=True,
                           help="Name of the local cluster (several can run side by side).")


class _OneLine(click.ClickException):
    def __init__(self, exc: MilcoOSError) -> None:
        super().__init__(str(exc))
        self.exit_code = exc.exit_code


def _one_line_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Cluster and option errors become one ``Error:`` line with the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MilcoOSError as exc:
            raise _OneLine(exc) from None

    return wrapper


@click.group()
def cluster() -> None:
    """Start, stop and inspect a local OpenSearch or Elasticsearch cluster."""


def _settings(items: tuple[str, ...]) -> dict[str, str]:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--setting")
        extra[key] = value
    return extra


@cluster.command()
@name_option
@click.option("--distribution", "dist_name", type=click.Choice(DISTRIBUTIONS),
              default="opensearch", show_default=True, help="Which search server to run.")
@click.option("--version", "version",
              help="Server version [default: OpenSearch 2.19.6, Elasticsearch 9.2.4]; OpenSearch "
                   "3.3.0+ and Elasticsearch 9.x need a JDK 21+, found automatically.")
@click.option("--nodes", default=1, show_default=True, help="Number of nodes (1 or more).")
@click.option("--heap",
              help=f"JVM heap per node, e.g. 1g [default: {DEFAULT_HEAP}; local runtime].")
@click.option("--port", type=int, help="HTTP port of the first node [default: the port of the "
                                       "last run when free, else a free one; local runtime].")
@click.option("--setting", "settings", multiple=True, metavar="KEY=VALUE",
              help="Extra node setting (opensearch.yml / elasticsearch.yml; local runtime). "
                   "Repeatable.")
@click.option("--secure", is_flag=True,
              help="TLS and basic auth (security plugin; OpenSearch 2.11.1, local runtime).")
@click.option("--reset", is_flag=True,
              help="Delete the data of an earlier run under this name first (it is kept "
                   "otherwise; local runtime).")
@click.option("--runtime", type=click.Choice(["auto", "local", "docker"]), default="auto",
              show_default=True,
              help="`docker`: docker compose with docker/compose.yml; `local`: the server from "
                   "Maven Central, no Docker; `auto`: docker when a Docker engine answers.")
@click.option("--compose-file", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("docker/compose.yml"), show_default=True)
@_one_line_errors
def up(name: str, dist_name: str, version: str | None, nodes: int, heap: str | None,
       port: int | None, settings: tuple[str, ...], secure: bool, reset: bool, runtime: str,
       compose_file: Path) -> None:
    """Start a cluster, wait until it is green, and print its URL."""
    start = time.monotonic()
    extra = _settings(settings)
    if nodes < 1:
        raise ClusterOptionError("--nodes must be at least 1")
    if runtime == "docker" or (runtime == "auto" and compose_file.exists()
                               and docker.docker_available()):
        docker.refuse_unsupported({"--secure": secure, "--setting": extra, "--heap": heap,
                                   "--port": port, "--reset": reset})
        service = docker.pick(compose_file, dist_name, version, nodes)
        click.echo(f"starting {dist_name} {service.version} with docker compose "
                   f"({service.nodes} node(s))...", err=True)
        state = docker.up(name, service, compose_file)
    else:
        heap = check_heap(heap or DEFAULT_HEAP)
        check_port(port)
        secure_default = SECURE_VERSION if secure and dist_name == "opensearch" else None
        dist = distribution(dist_name, version or secure_default)
        dist.check_secure(secure)
        click.echo(f"starting {dist.label}{' (secure)' if secure else ''} ({nodes} node(s), "
                   f"heap {heap})...", err=True)
        state = LocalCluster(name).up(nodes=nodes, dist=dist, heap=heap, http_port=port,
                                      settings=extra, secure=secure, reset=reset)
    _report(state, name, nodes, time.monotonic() - start)


def _report(state: ClusterState, name: str, nodes: int, seconds: float) -> None:
    click.echo(f"cluster {name!r} ({state.distribution} {state.version}) is up after "
               f"{seconds:.1f}s ({len(state.nodes) or nodes} node(s))", err=True)
    if state.ca_file:
        click.echo(f"connect with: --user {state.user} --password-file {state.password_file} "
                   f"--ca-certs {state.ca_file}", err=True)
    click.echo(state.url)


@cluster.command()
@name_option
@_one_line_errors
def down(name: str) -> None:
    """Stop the cluster that `up` started (by recorded pid; nothing else). Data is kept."""
    stopped = LocalCluster(name).down()
    click.echo(f"stopped {len(stopped)} node process(es) of cluster {name!r}; its data is kept "
               "(`cluster destroy` deletes it)"
               if stopped else f"cluster {name!r}: nothing was running")


@cluster.command()
@name_option
@_one_line_errors
def destroy(name: str) -> None:
    """Stop the cluster and delete its data."""
    existed = LocalCluster(name).destroy()
    click.echo(f"cluster {name!r}: data deleted" if existed
               else f"cluster {name!r}: no data to delete")


@cluster.command()
@name_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_one_line_errors
def status(name: str, as_json: bool) -> None:
    """Show distribution, version, nodes and health."""
    info = LocalCluster(name).status()
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(f"{info['url']}  {info['distribution']} {info['version']}  "
               f"health={info['health']}  runtime={info['runtime']}")
    for node in info["nodes"]:
        click.echo(f"  node {node['name']}: modules {', '.join(node['modules'])}")
