"""`milco-os index create|delete|info|approximate NAME`, and the engine options shared with
search."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import click

from milco_os.cli.options import PRUNE, connection_options
from milco_os.core.errors import InputError
from milco_os.engines.approximate import BuildSettings
from milco_os.engines.connection import ConnectionSettings
from milco_os.models.locations import DEFAULT_MODEL
from milco_os.vectors.sparse import VIEWS


def engine_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The cluster options of :func:`connection_options` (``--engine local`` and
    ``--local-path`` included); the command receives ``engine: Engine``.

    Without a configured or running cluster, the local on-disk engine is used.
    """

    @connection_options
    @functools.wraps(func)
    def wrapper(*args: Any, settings: ConnectionSettings, **kwargs: Any) -> Any:
        from milco_os.engines import open_engine

        return func(*args, engine=open_engine(settings), **kwargs)

    return wrapper


def _views(_ctx: click.Context, _param: click.Parameter, value: str) -> list[str]:
    views = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise click.BadParameter(f"{value!r}: expected a comma-separated subset of {VIEWS}")
    return views


@click.group()
def index() -> None:
    """Create, delete and inspect MILCO indexes."""


@index.command()
@click.argument("name")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Model folder, named model or hub id the index is built with "
                   "(recorded in _meta; search uses it by default).")
@click.option("--views", default="pivot,echo", show_default=True, callback=_views,
              help="Sparse views stored.")
@click.option("--pruning", type=PRUNE, default="none", show_default=True,
              help="Document pruning the index is built with (recorded in _meta).")
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--replicas", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--refresh-interval", help="e.g. 30s, or -1 during bulk loads.")
@click.option("--exist-ok", is_flag=True, help="Succeed when the index already exists.")
@engine_options
def create(name: str, model: str, views: list[str], pruning: Any, shards: int, replicas: int,
           refresh_interval: str | None, exist_ok: bool, engine) -> None:
    """Create index NAME with the MILCO mapping."""
    meta = {"model": model, "views": views, "pruning": str(pruning)}
    engine.create_index(name, meta=meta, shards=shards, replicas=replicas,
                        refresh_interval=refresh_interval, exist_ok=exist_ok)
    click.echo(f"created {engine.name} index {name!r}", err=True)


@index.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--missing-ok", is_flag=True, help="Succeed when the index does not exist.")
@engine_options
def delete(name: str, yes: bool, missing_ok: bool, engine) -> None:
    """Delete index NAME and all its documents."""
    if missing_ok and not engine.index_exists(name):
        click.echo(f"{engine.name} index {name!r} does not exist: nothing deleted", err=True)
        return
    if not yes:
        click.confirm(f"Delete {engine.name} index {name!r} and all its documents?", abort=True)
    engine.delete_index(name, missing_ok=missing_ok)
    click.echo(f"deleted {engine.name} index {name!r}", err=True)


@index.command()
@click.argument("name")
@engine_options
def info(name: str, engine) -> None:
    """Print index NAME's _meta, document count, size and settings as JSON."""
    details = engine.index_info(name)
    click.echo(json.dumps({"engine": engine.name, **details}, indent=2, ensure_ascii=False))


@index.command()
@click.argument("name")
@click.option("--n-postings", type=click.IntRange(min=1), default=BuildSettings.n_postings,
              show_default=True,
              help="Posting-list length Seismic keeps per term: longer finds more of the exact "
                   "top hits, searches slower.")
@engine_options
def approximate(name: str, n_postings: int, engine) -> None:
    """Build the local engine's approximate index over NAME (needs pyseismic-lsr).

    Searches then re-score Seismic's candidates exactly; documents written after
    the build are scanned exactly until the next build. `--engine local` only.
    """
    from milco_os.engines.local import LocalEngine

    if not isinstance(engine, LocalEngine):
        raise InputError(f"the approximate index is for --engine local; {engine.name} "
                         "searches its own inverted index")
    documents = engine.count(name)
    click.echo(f"building the approximate index of local index {name!r} over {documents:,} "
               "documents", err=True)
    tick = time.perf_counter()
    entry = engine.build_approximate(name, BuildSettings(n_postings=n_postings))
    click.echo(json.dumps({"index": name, "rows": entry["rows"], "seismic_indexes":
                           len(entry["files"]), "settings": entry["settings"],
                           "seconds": round(time.perf_counter() - tick, 1)}))
