"""Options shared by several commands, and the one validation layer for option values.

Every option value is checked by its Click type before a command runs (ranges,
NaN/inf, devices, URLs, pruning specs), so a wrong value is one line naming the
option. Models are loaded through :func:`load_encoder`, which turns any failure
into a :class:`~milco_os.core.errors.ModelLoadError` naming the model.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from milco_os.core.errors import MilcoOSError, ModelLoadError
from milco_os.encoders import AUTO, BACKENDS
from milco_os.engines.connection import ENGINES, ConnectionSettings


class FiniteFloat(click.FloatRange):
    """A float in [min, max] that is a number (``nan`` and ``inf`` pass FloatRange)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class PruneSpec(click.ParamType):
    """``none | mass:P | topk:K | threshold:T``, parsed here (the only parse of the option),
    passed on as the :class:`~milco_os.vectors.pruning.Pruning`."""

    name = "prune"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        from milco_os.vectors.pruning import Pruning

        if isinstance(value, Pruning):  # a default already parsed
            return value
        try:
            return Pruning.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Device(click.ParamType):
    """A torch device this machine has: ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> str:
        import torch

        try:
            device = torch.device(str(value))
        except (RuntimeError, ValueError):
            self.fail(f"{value!r} is not a torch device (cpu, cuda, cuda:N, mps)", param, ctx)
        available = {"cpu": True, "cuda": torch.cuda.is_available(),
                     "mps": torch.backends.mps.is_available()}
        if not available.get(device.type, False):
            self.fail(f"{value!r}: this machine has no {device.type} device", param, ctx)
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            self.fail(f"{value!r}: this machine has {torch.cuda.device_count()} CUDA "
                      "device(s)", param, ctx)
        return str(value)


PRUNE = PruneSpec()
DEVICE = Device()
UNIT_INTERVAL = FiniteFloat(0.0, 1.0)


def check_urls(_ctx: click.Context | None, _param: click.Parameter | None, value: str | None
               ) -> str | None:
    """``value`` if every comma-separated URL has an http(s) scheme and a host."""
    if value is None:
        return None
    urls = [u.strip() for u in value.split(",")]
    for url in urls:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
        except ValueError as exc:
            raise click.BadParameter(f"{url!r}: {exc}", param_hint="--url") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise click.BadParameter(f"{url!r}: expected http(s)://HOST[:PORT], e.g. "
                                     "http://localhost:9200", param_hint="--url")
    return ",".join(urls)


BACKEND = click.option(
    "--backend", type=click.Choice([AUTO, *BACKENDS]), default=AUTO, show_default=True,
    help="What runs the model: torch; onnx (ONNX Runtime fp32, exported next to the model "
         "on first use); onnx-int8 (quantised, its agreement with fp32 printed); auto: onnx "
         "for queries on the CPU, else torch.")


def index_model(engine: Any, index: str, model: str | None, force: bool = False) -> str:
    """``model``, else the model ``index`` records (:func:`~milco_os.index.compatibility.
    model_for_index`); a forced mismatch is a ``warning:`` line."""
    from milco_os.index.compatibility import model_for_index

    chosen, warnings = model_for_index(index, engine.meta(index), model, force=force)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    return chosen


def load_encoder(model: str, device: str | None = None, backend: str = AUTO,
                 kind: str = "query") -> Any:
    """The encoder of ``model`` (:func:`milco_os.encoders.load_encoder`); any failure is one
    :class:`ModelLoadError` naming the model (a missing or empty folder, a truncated
    weights file, a bad config)."""
    from milco_os.encoders import load_encoder as load

    with _model_errors(model):
        return load(model, backend, device, kind)


def check_model(model: str) -> None:
    """The checks of :func:`load_encoder` that read no weights (for a command that may never
    need the model), failing as it does."""
    from milco_os.models.registry import check_model as check

    with _model_errors(model):
        check(model)


def load_model(model: str) -> Any:
    """The sparse model of ``model`` (no tokenizers), failing as :func:`load_encoder` does."""
    from milco_os.models.registry import load_sparse_model

    with _model_errors(model):
        return load_sparse_model(model)


@contextlib.contextmanager
def _model_errors(model: str) -> Iterator[None]:
    try:
        yield
    except MilcoOSError:
        raise
    except Exception as exc:  # transformers, safetensors, json and torch raise many kinds
        what = "model folder" if Path(model).expanduser().exists() else "model"
        raise ModelLoadError(f"cannot load {what} {model!r}: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())}") from exc


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the cluster options; the command receives ``settings: ConnectionSettings``.

    Passwords and API keys are taken from the environment or from files only,
    never from the command line (where they would leak into shell history and
    process listings).
    """

    @click.option("--url", envvar="MILCO_OS_URL", callback=check_urls,
                  help="Cluster URL [env MILCO_OS_URL; default: the cluster started by "
                       "`milco-os cluster up`].")
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
        settings = ConnectionSettings.from_env(
            url=url, engine=engine, user=user, password_file=password_file,
            api_key_file=api_key_file, ca_certs=ca_certs,
            verify_certs=False if insecure else None, local_path=local_path,
        )
        return func(*args, settings=settings, **kwargs)

    return wrapper
