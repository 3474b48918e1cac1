"""The ``milco-os`` command line: a thin layer over the Python API.

Each command group lives in its own module and is registered here.
"""

from __future__ import annotations

import os
import warnings

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
from milco_os.core.errors import MilcoOSError
from milco_os.devcluster import endpoint
from milco_os.engines.connection import redact_credentials, use_local_cluster


class MilcoGroup(click.Group):
    """The one place where errors become one line on stderr and an exit status.

    :class:`~milco_os.core.errors.MilcoOSError` kinds carry their exit status (see
    :mod:`milco_os.core.errors`); an OS error (a file that cannot be read) is bad input;
    anything else is a bug, reported in one line (``MILCO_OS_DEBUG=1``: the traceback).
    """

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except MilcoOSError as exc:
            _fail(ctx, str(exc), exc.exit_code)
        except OSError as exc:
            _fail(ctx, str(exc), 2)
        except Exception as exc:
            if os.environ.get("MILCO_OS_DEBUG"):
                raise
            _fail(ctx, f"internal error, a bug: {type(exc).__name__}: {exc} (MILCO_OS_DEBUG=1 "
                  "shows where)", 70)


def _warning_line(message: Warning | str, category: type[Warning], *_: object, **__: object
                  ) -> None:
    """A warning as one ``warning:`` line on stderr (no file names or source lines)."""
    click.echo("warning: " + redact_credentials(" ".join(str(message).split())), err=True)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    # Every error line passes here: a URL's user:password never reaches the terminal.
    click.echo("error: " + redact_credentials(" ".join(message.split())), err=True)
    ctx.exit(code)


@click.group(cls=MilcoGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="milco-os")
def main() -> None:
    """Multilingual learned sparse retrieval (MILCO) on OpenSearch and Elasticsearch."""
    warnings.showwarning = _warning_line
    # Without --url, commands use the cluster `milco-os cluster up` started.
    use_local_cluster(endpoint)


main.add_command(cluster)
main.add_command(ingest)
main.add_command(encode)
main.add_command(model)
main.add_command(evaluate)
main.add_command(index)
main.add_command(search)
main.add_command(dsl)
main.add_command(serve)
