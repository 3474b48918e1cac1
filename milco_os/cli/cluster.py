"""`milco-os cluster up|down|status`."""

from __future__ import annotations

import click


@click.group()
def cluster() -> None:
    """Start, stop and inspect a local OpenSearch cluster."""
