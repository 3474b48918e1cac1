"""How milco-os reaches a search cluster: URL, credentials, TLS.

Settings come from (highest first) explicit arguments, environment variables,
then a local cluster, through the hook :func:`use_local_cluster` (the command
line installs :func:`milco_os.devcluster.endpoint`, the cluster started by
``milco-os cluster up``):

==========================  =================================================
``MILCO_OS_URL``            cluster URL(s), comma-separated: ``https://a:9200,https://b:9200``
``MILCO_OS_ENGINE``         ``opensearch`` (default), ``elasticsearch`` or ``local``
``MILCO_OS_LOCAL_PATH``     folder of the embedded ``local`` engine
``MILCO_OS_USER``           basic-auth user
``MILCO_OS_PASSWORD``       basic-auth password (or ``MILCO_OS_PASSWORD_FILE``)
``MILCO_OS_API_KEY``        API key (or ``MILCO_OS_API_KEY_FILE``)
``MILCO_OS_CA_CERTS``       CA bundle used to verify the server certificate
``MILCO_OS_INSECURE``       ``1`` disables TLS verification (never the default)
==========================  =================================================

Secrets are read from the environment or from files only, and never appear in
``repr`` or logs.

>>> s = ConnectionSettings(url="http://127.0.0.1:9200", user="u", password="hunter2")
>>> "hunter2" in repr(s)
False
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from milco_os.core.errors import InputError, ServiceError

ENGINES = ("opensearch", "elasticsearch", "local")


class ConnectionSettingsError(InputError):
    """No cluster could be determined, or the settings are inconsistent."""


class NoClusterError(ConnectionSettingsError):
    """No URL was given and no local cluster is known (callers may use the local engine)."""


class ClusterUnreachableError(ConnectionSettingsError, ServiceError):
    """The local cluster that would be used was started but does not answer."""

    exit_code = ServiceError.exit_code


@dataclass(frozen=True)
class LocalEndpoint:
    """Where a local cluster answers, and how to log in to it."""

    urls: tuple[str, ...]
    engine: str = "opensearch"
    user: str | None = None
    password_file: str | None = None
    ca_file: str | None = None


_local_cluster: Callable[[], LocalEndpoint | None] | None = None


def use_local_cluster(hook: Callable[[], LocalEndpoint | None] | None) -> None:
    """Make :meth:`ConnectionSettings.resolved` use the cluster ``hook`` returns when no URL
    is given (``None``: the hook returns no cluster; ``None`` as hook: no local cluster)."""
    global _local_cluster
    _local_cluster = hook


def _read_secret(value: str | None, file: str | os.PathLike[str] | None, what: str
                 ) -> str | None:
    if value:
        return value
    if file:
        path = Path(file).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            message = f"cannot read {what} file {path}: {exc.strerror}"
            raise ConnectionSettingsError(message) from None
    return None


def redact_credentials(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL in it replaced by ``***@``.

    >>> redact_credentials("cannot reach http://admin:s3cret@10.0.0.1:9200/x")
    'cannot reach http://***@10.0.0.1:9200/x'
    """
    return _URL_CREDENTIALS.sub(r"\1***@", text)


_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


@dataclass(frozen=True)
class ConnectionSettings:
    """Everything needed to open a client; secrets are hidden from ``repr``."""

    url: str | None = None
    engine: str = "opensearch"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    ca_certs: str | None = None
    verify_certs: bool = True
    timeout: float = 60.0
    local_path: str | None = None  # folder of the embedded engine, when engine == "local"

    def __repr__(self) -> str:  # a URL may carry credentials (http://user:password@host)
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in
                           ("url", "engine", "user", "ca_certs", "verify_certs", "timeout",
                            "local_path"))
        return redact_credentials(f"ConnectionSettings({fields})")

    @property
    def display_url(self) -> str | None:
        """The URL as it may be printed: without credentials."""
        return None if self.url is None else redact_credentials(self.url)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConnectionSettingsError(
                f"unknown engine {self.engine!r}; expected one of {ENGINES}")
        if self.password and not self.user:
            raise ConnectionSettingsError(
                "a password was given without a user (give --user or set MILCO_OS_USER)")

    @classmethod
    def from_env(cls, **overrides: Any) -> ConnectionSettings:
        """Settings from ``MILCO_OS_*`` variables; non-None ``overrides`` win.

        ``password_file`` / ``api_key_file`` overrides are read here.
        """
        env = os.environ
        password_file = overrides.pop("password_file", None) or env.get("MILCO_OS_PASSWORD_FILE")
        api_key_file = overrides.pop("api_key_file", None) or env.get("MILCO_OS_API_KEY_FILE")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown connection settings {sorted(unknown)}")
        values: dict[str, Any] = {
            "url": env.get("MILCO_OS_URL") or None,
            "engine": env.get("MILCO_OS_ENGINE", "opensearch"),
            "user": env.get("MILCO_OS_USER") or None,
            "password": _read_secret(env.get("MILCO_OS_PASSWORD"), password_file, "password"),
            "api_key": _read_secret(env.get("MILCO_OS_API_KEY"), api_key_file, "API key"),
            "ca_certs": env.get("MILCO_OS_CA_CERTS") or None,
            "verify_certs": env.get("MILCO_OS_INSECURE", "") not in ("1", "true", "yes"),
            "local_path": env.get("MILCO_OS_LOCAL_PATH") or None,
        }
        # Overrides join before the settings are checked: `--user` goes with a password file.
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})

    def resolved(self) -> ConnectionSettings:
        """These settings, with the local cluster's URL (and engine, and credentials when it
        is secure) filled in when no URL was given."""
        if self.url or self.engine == "local":
            return self
        local = _local_cluster() if _local_cluster is not None else None
        if local is None:
            raise NoClusterError(
                "no cluster configured: pass --url, set MILCO_OS_URL, "
                "or start a local one with `milco-os cluster up`"
            )
        settings = replace(self, url=",".join(local.urls), engine=local.engine)
        if local.ca_file and not self.user:  # a secure local cluster: its own CA and admin
            password = _read_secret(None, local.password_file, "password")
            return replace(settings, user=local.user, password=password,
                           ca_certs=self.ca_certs or local.ca_file)
        return settings

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by the opensearch-py and elasticsearch clients."""
        if not self.url:
            raise ConnectionSettingsError("no cluster URL (call resolved() first)")
        kwargs: dict[str, Any] = {
            "hosts": [u.strip() for u in self.url.split(",")],
            "verify_certs": self.verify_certs,
            "request_timeout" if self.engine == "elasticsearch" else "timeout": self.timeout,
        }
        if self.ca_certs:
            kwargs["ca_certs"] = self.ca_certs
        if self.engine == "opensearch" and not self.verify_certs:
            kwargs["ssl_show_warn"] = False
        if self.user:
            key = "basic_auth" if self.engine == "elasticsearch" else "http_auth"
            kwargs[key] = (self.user, self.password or "")
        if self.api_key:
            if self.engine == "elasticsearch":
                kwargs["api_key"] = self.api_key
            else:
                kwargs["headers"] = {"Authorization": f"ApiKey {self.api_key}"}
        return kwargs

    def client(self) -> Any:
        """An ``opensearchpy.OpenSearch`` or ``elasticsearch.Elasticsearch`` client."""
        settings = self.resolved()
        if settings.engine == "elasticsearch":
            from elasticsearch import Elasticsearch

            return Elasticsearch(**settings.client_kwargs())
        from opensearchpy import OpenSearch

        return OpenSearch(**settings.client_kwargs())
