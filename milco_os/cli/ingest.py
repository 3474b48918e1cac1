"""`milco-os ingest`: build an index as its ingest spec says."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from milco_os.cli.options import DEVICE, PRUNE, check_model, connection_options, load_encoder
from milco_os.engines.connection import ConnectionSettings


def _parse_shard(_ctx: click.Context, _param: click.Parameter, value: str | None
                 ) -> tuple[int, int]:
    if value is None:
        return (0, 1)
    try:
        index, count = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise click.BadParameter(f"{value!r}: expected 0 <= I < N")
    return (index, count)


@click.command()
@click.option("--index", "index", required=True, help="Index to build (spec ingest/INDEX.yaml).")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, exists=True),
              help="Ingest spec file [default: ingest/INDEX.yaml].")
@click.option("--input", "inputs", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Local JSONL/Parquet/CSV files (id, text[, title, lang]); overrides the "
                   "spec's source. Repeatable.")
@click.option("--model", help="Model folder or hub id; overrides the spec.")
@click.option("--prune", type=PRUNE, help="none | mass:P | topk:K | threshold:T; overrides the "
                                          "spec (default: none, the model's exact vectors).")
@click.option("--max-length", type=click.IntRange(min=1), help="Tokens per passage given to "
                                                               "the model.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Passages per model batch.")
@click.option("--lang", help="Language of documents that carry none.")
@click.option("--shard", "shard_of", callback=_parse_shard, metavar="I/N",
              help="Ingest only records I, I+N, I+2N, ... so N workers share one corpus.")
@click.option("--resume", is_flag=True, help="Skip documents already in the index.")
@click.option("--retries", type=click.IntRange(min=0), default=8, show_default=True,
              help="Retries of a bulk request (or refused document) on 429/5xx/timeouts, "
                   "with exponential backoff; 0: one attempt.")
@click.option("--errors-out", type=click.Path(dir_okay=False),
              help="Write every failed record, with its reason, to this JSONL file.")
@click.option("--device", type=DEVICE, help="Torch device for the model (default: cuda when "
                                            "available).")
@click.option("--force", is_flag=True, help="Write into an existing index even if its model, "
                                            "views or pruning differ.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@connection_options
def ingest(index: str, spec_path: str | None, inputs: tuple[str, ...], model: str | None,
           prune: Any | None, max_length: int | None, batch_size: int | None, lang: str | None,
           shard_of: tuple[int, int], resume: bool, retries: int, errors_out: str | None,
           device: str | None, force: bool, quiet: bool, settings: ConnectionSettings) -> None:
    """Encode a corpus and bulk-index its pivot and echo vectors.

    Prints a JSON report: read, encoded, indexed, skipped, failed, terms per
    document (mean, p95) and index size. Exits with status 1 when any record
    failed (the others are still indexed) or no record was read, and 2 when
    ingestion stopped early (a bad file, SIGINT/SIGTERM, an unreachable cluster;
    the report is still printed).
    """
    from milco_os.engines import open_engine
    from milco_os.index.spec import IngestSpec
    from milco_os.pipeline.ingest import IngestError, Ingestor, read_source

    spec = IngestSpec.load(spec_path) if spec_path else IngestSpec.find(index)
    if spec is None:
        if not inputs:
            raise click.UsageError(f"no ingest spec ingest/{index}.yaml: give --spec, or "
                                   "--input FILE with --model")
        spec = IngestSpec(index=index)
    spec = spec.with_overrides(index=index, files=inputs, model=model, prune=prune,
                               max_length=max_length, batch_size=batch_size, lang=lang)
    records, pre_encoded = _peek_pre_encoded(read_source(spec))
    encoder = _encoder(spec.model, device, lazy=pre_encoded and not spec.passages.window)
    engine = open_engine(settings)
    click.echo(f"ingesting into {engine.name} index {spec.index!r} "
               f"(model {spec.model or 'none: pre-encoded vectors'}, prune {spec.pruning})",
               err=True)
    ingestor = Ingestor(engine, spec, encoder, resume=resume,
                        shard_of=shard_of, progress=not quiet, error_log=errors_out,
                        max_attempts=retries + 1, force=force)
    try:
        with _sigterm_interrupts():
            report = ingestor.run(records)
    except IngestError as exc:
        click.echo(json.dumps(exc.report.summary(), ensure_ascii=False))
        raise IngestError(f"{exc} [engine: {engine.address}]", exc.report) from None
    click.echo(json.dumps(report.summary(), ensure_ascii=False))
    if not report.read:
        shard = f" for shard {shard_of[0]}/{shard_of[1]}" if shard_of[1] > 1 else ""
        click.echo(f"no records read from {', '.join(spec.source.files) or spec.source.hub}"
                   f"{shard}: is the input empty?", err=True)
        sys.exit(1)
    if report.failed:
        click.echo(f"{report.failed} document(s) failed; see the report's errors"
                   + (f" and {errors_out}" if errors_out else " (--errors-out FILE lists all)"),
                   err=True)
        sys.exit(1)


def _encoder(model: str | None, device: str | None, lazy: bool = False) -> Any:
    """The encoder of ``model``, loaded now (a bad model stops the command before any work),
    or when first used if ``lazy`` (a pre-encoded corpus never needs it)."""
    if not model:
        return None
    if lazy:
        check_model(model)  # a bad model stops the command even when no text needs it
        return _LazyEncoder(model, device)
    if not Path(model).exists():
        click.echo(f"model {model!r} is not a local folder: loading it by name", err=True)
    return load_encoder(model, device, kind="document")


class _LazyEncoder:
    """An encoder loaded by its first ``encode``."""

    def __init__(self, model: str, device: str | None) -> None:
        self.model, self.device = model, device

    @functools.cached_property
    def loaded(self) -> Any:
        return _encoder(self.model, self.device)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        return self.loaded.encode(*args, **kwargs)


def _peek_pre_encoded(records: Iterator[Any]) -> tuple[Iterator[Any], bool]:
    """``records`` unchanged, and whether the first one carries its own vectors."""
    first = next(records, None)
    if first is None:
        return iter(()), False
    return itertools.chain([first], records), getattr(first, "vectors", None) is not None


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the ingest as SIGINT does: report printed, refresh interval restored."""
    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
