"""The ``milco-os`` command line: a thin layer over the Python API.

Each command group lives in its own module and is registered here.
"""

from __future__ import annotations

import click

from milco_os import __version__
from milco_os.cli.cluster import cluster
from milco_os.cli.encode import encode
from milco_os.cli.evaluate import evaluate
from milco_os.cli.index import index
from milco_os.cli.ingest import ingest
from milco_os.cli.model import model
from milco_os.cli.search import dsl, search
from milco_os.cli.serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="milco-os")
def main() -> None:
    """Multilingual learned sparse retrieval (MILCO) on OpenSearch and Elasticsearch."""


main.add_command(cluster)
main.add_command(ingest)
main.add_command(encode)
main.add_command(model)
main.add_command(evaluate)
main.add_command(index)
main.add_command(search)
main.add_command(dsl)
main.add_command(serve)
