"""`milco-os serve`: query-time encoding, query bodies and search over HTTP."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import click

from milco_os.cli.options import BACKEND, PRUNE, connection_options, index_model
from milco_os.engines.connection import ConnectionSettings


@click.command()
@click.option("--model", required=True, help="Model folder, named model (milco-small) or hub id.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 opens the server to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes, each with its own copy of the model, sharing the port.")
@click.option("--device", help="Torch device (default: cuda when available, else cpu).")
@BACKEND
@click.option("--threads", type=click.IntRange(min=1),
              help="Torch threads per model call [default: 1 for up to 4 texts, else all "
                   "usable cores].")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most texts encoded in one model call.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Longest wait for more texts before an idle model starts a batch.")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Texts that may wait for the model; past that, requests get 429.")
@click.option("--max-texts", type=click.IntRange(min=1), default=32, show_default=True,
              help="Texts per request (more: 413).")
@click.option("--max-chars", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Characters per text (more: 413).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.001), default=30.0,
              show_default=True, help="Seconds a request may wait for the model (then 504).")
@click.option("--prune", type=PRUNE, default="none", show_default=True,
              help="Default pruning of every answer: none | mass:P | topk:K | threshold:T.")
@click.option("--index", "indexes", multiple=True,
              help="Index that POST /search may query, repeatable (the first is the default).")
@click.option("--force", is_flag=True,
              help="Serve even if --model differs from the model an --index was built with.")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="File holding the bearer token clients must send [or env "
                   "MILCO_OS_SERVE_TOKEN(_FILE)]; default: no token.")
@click.option("--access-log", is_flag=True, help="Log every request (method, path, status).")
@click.option("--fd", type=int, hidden=True)  # a bound socket handed down to a worker
@connection_options
def serve(model: str, host: str, port: int, workers: int, device: str | None, backend: str,
          threads: int | None, max_batch: int, max_wait_ms: float, max_queue: int,
          max_texts: int, max_chars: int, timeout_s: float, prune: Any,
          indexes: tuple[str, ...], force: bool, token_file: str | None, access_log: bool,
          fd: int | None, settings: ConnectionSettings) -> None:
    """Serve MODEL over HTTP: POST /encode, /embed_sparse, /dsl, /search; GET /health, /metrics.

    Concurrent requests are encoded together (dynamic batching). SIGTERM or Ctrl-C
    stops accepting connections and answers the requests already received first.
    """
    _require_serve_extra()
    from milco_os.core.errors import MilcoOSError
    from milco_os.serve.config import ServeConfig, read_token

    try:
        config = ServeConfig(model=model, device=device, backend=backend, max_batch=max_batch,
                             max_wait_ms=max_wait_ms, max_queue=max_queue, max_texts=max_texts,
                             max_chars=max_chars, timeout_s=timeout_s, prune=prune,
                             threads=threads, indexes=indexes, token=read_token(token_file))
    except MilcoOSError as exc:
        raise click.UsageError(str(exc)) from None
    if not config.token and not _loopback(host):
        click.echo(f"warning: serving on {host} without a bearer token: anyone who can reach "
                   "this port can use it (give --token-file or MILCO_OS_SERVE_TOKEN)", err=True)
    engine = _engine(settings, model, indexes, force)
    if workers > 1 and fd is None:
        sys.exit(_supervise(host, port, workers))
    sys.exit(_run(config, engine, host, port, fd, access_log))


def _require_serve_extra() -> None:
    missing = [name for name in ("starlette", "uvicorn", "prometheus_client")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(f"milco-os serve needs {', '.join(missing)}: install the "
                                   "serve extra, pip install 'milco-os[serve]'")


def _engine(settings: ConnectionSettings, model: str, indexes: tuple[str, ...],
            force: bool) -> Any:
    """The engine /dsl and /search use; each --index must exist and match the model."""
    from milco_os.engines import EngineError, open_engine
    from milco_os.engines.connection import ConnectionSettingsError

    try:
        engine = open_engine(settings)
        for index in indexes:
            index_model(engine, index, model, force)
    except (EngineError, ConnectionSettingsError) as exc:
        raise click.ClickException(str(exc)) from None
    return engine


def _loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _run(config: Any, engine: Any, host: str, port: int, fd: int | None,
         access_log: bool) -> int:
    """Serve until stopped; 0, or 2 when the model could not be loaded."""
    import uvicorn

    from milco_os.serve.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    app = create_app(config, engine)
    where = f"fd {fd}" if fd is not None else f"http://{host}:{port}"
    logging.getLogger("milco_os.serve").info(
        "serving %s on %s (batches of <= %d texts, <= %g ms wait, queue <= %d texts%s)",
        config.model, where, config.max_batch, config.max_wait_ms, config.max_queue,
        ", bearer token required" if config.token else "")
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, fd=fd, access_log=access_log, log_level="info",
        timeout_graceful_shutdown=int(config.timeout_s) + 5, lifespan="on"))
    # uvicorn re-raises the stop signal once it has shut down gracefully; with the default
    # handlers that would kill the process (status -15) before it reports its own status.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda _signum, _frame: None)
    server.run()
    state = app.state.serve
    if state.load_error:
        click.echo(f"Error: cannot load model {config.model}: {state.load_error}", err=True)
        return 2
    return 0


def _supervise(host: str, port: int, workers: int) -> int:
    """Bind once, start ``workers`` copies of this command on the socket, pass signals on."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise click.ClickException(f"cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    fd = sock.fileno()
    os.set_inheritable(fd, True)
    # Later options win in click, so the same command line plus these runs one worker.
    argv = [sys.executable, "-m", "milco_os.cli", *sys.argv[1:], "--workers", "1",
            "--fd", str(fd)]
    # Own sessions: a terminal's Ctrl-C reaches the workers once, through forward().
    children = [subprocess.Popen(argv, pass_fds=(fd,), start_new_session=True)
                for _ in range(workers)]

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)
