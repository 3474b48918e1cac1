"""Options shared by several commands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from milco_os.connection import ENGINES, ConnectionSettings, ConnectionSettingsError


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the cluster options; the command receives ``settings: ConnectionSettings``.

    Passwords and API keys are taken from the environment or from files only,
    never from the command line (where they would leak into shell history and
    process listings).
    """

    @click.option("--url", envvar="MILCO_OS_URL", help="Cluster URL [env MILCO_OS_URL; "
                  "default: the cluster started by `milco-os cluster up`].")
    @click.option("--engine", type=click.Choice(ENGINES), envvar="MILCO_OS_ENGINE",
                  help="Search engine [default: opensearch when a cluster is configured, "
                       "else the embedded `local` engine].")
    @click.option("--local-path", envvar="MILCO_OS_LOCAL_PATH", type=click.Path(file_okay=False),
                  help="Folder of the embedded local engine [default: ~/.cache/milco-os/local].")
    @click.option("--user", envvar="MILCO_OS_USER", help="Basic-auth user [env MILCO_OS_USER].")
    @click.option("--password-file", type=click.Path(dir_okay=False),
                  help="File holding the password [or env MILCO_OS_PASSWORD(_FILE)].")
    @click.option("--api-key-file", type=click.Path(dir_okay=False),
                  help="File holding an API key [or env MILCO_OS_API_KEY(_FILE)].")
    @click.option("--ca-certs", envvar="MILCO_OS_CA_CERTS", type=click.Path(dir_okay=False),
                  help="CA bundle to verify the server certificate.")
    @click.option("--insecure", is_flag=True, default=None,
                  help="Do not verify TLS certificates (verification is on by default).")
    @functools.wraps(func)
    def wrapper(*args: Any, url, engine, local_path, user, password_file, api_key_file, ca_certs,
                insecure, **kwargs: Any) -> Any:
        try:
            settings = ConnectionSettings.from_env(
                url=url, engine=engine, user=user, password_file=password_file,
                api_key_file=api_key_file, ca_certs=ca_certs,
                verify_certs=False if insecure else None, local_path=local_path,
            )
        except ConnectionSettingsError as exc:
            raise click.UsageError(str(exc)) from None
        return func(*args, settings=settings, **kwargs)

    return wrapper
