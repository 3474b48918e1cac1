"""`milco-os ingest`: build an index as its ingest spec says."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from milco_os.cli.options import connection_options
from milco_os.connection import ConnectionSettings


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
@click.option("--prune", help="none | mass:P | topk:K | threshold:T; overrides the spec "
                              "(default: none, the model's exact vectors).")
@click.option("--max-length", type=int, help="Tokens per passage given to the model.")
@click.option("--batch-size", type=int, help="Passages per model batch.")
@click.option("--lang", help="Language of documents that carry none.")
@click.option("--shard", "shard_of", callback=_parse_shard, metavar="I/N",
              help="Ingest only records I, I+N, I+2N, ... so N workers share one corpus.")
@click.option("--resume", is_flag=True, help="Skip documents already in the index.")
@click.option("--retries", "max_attempts", default=8, show_default=True,
              help="Attempts per bulk request on 429/5xx/timeouts (exponential backoff).")
@click.option("--errors-out", type=click.Path(dir_okay=False),
              help="Write every failed record, with its reason, to this JSONL file.")
@click.option("--device", help="Torch device for the model (default: cuda when available).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@connection_options
def ingest(index: str, spec_path: str | None, inputs: tuple[str, ...], model: str | None,
           prune: str | None, max_length: int | None, batch_size: int | None, lang: str | None,
           shard_of: tuple[int, int], resume: bool, max_attempts: int, errors_out: str | None,
           device: str | None, quiet: bool, settings: ConnectionSettings) -> None:
    """Encode a corpus and bulk-index its pivot and echo vectors.

    Prints a JSON report: read, encoded, indexed, skipped, failed, terms per
    document (mean, p95) and index size. Exits with status 1 when any record
    failed (the others are still indexed) and 2 when ingestion stopped early.
    """
    from milco_os.engines import EngineError, open_engine
    from milco_os.ingest import IngestError, Ingestor, read_source
    from milco_os.spec import IngestSpec, SpecError

    try:
        spec = IngestSpec.load(spec_path) if spec_path else IngestSpec.find(index)
        if spec is None:
            if not inputs:
                raise click.UsageError(f"no ingest spec ingest/{index}.yaml: give --spec, or "
                                       "--input FILE with --model")
            spec = IngestSpec(index=index)
        spec = spec.with_overrides(index=index, files=inputs, model=model, prune=prune,
                                   max_length=max_length, batch_size=batch_size, lang=lang)
    except SpecError as exc:
        raise click.UsageError(str(exc)) from None
    encoder, pruning = _load_model(spec, device)
    engine = open_engine(settings)
    click.echo(f"ingesting into {engine.name} index {spec.index!r} "
               f"(model {spec.model or 'none: pre-encoded vectors'}, prune {spec.prune})",
               err=True)
    ingestor = Ingestor(engine, spec, encoder, pruning, resume=resume, shard_of=shard_of,
                        progress=not quiet, error_log=errors_out, max_attempts=max_attempts)
    try:
        report = ingestor.run(read_source(spec))
    except IngestError as exc:
        click.echo(json.dumps(exc.report.summary(), ensure_ascii=False))
        where = getattr(getattr(engine, "settings", None), "url", None) or engine.name
        click.echo(f"error: {exc} [cluster: {where}]", err=True)
        sys.exit(2)
    except (EngineError, ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(report.summary(), ensure_ascii=False))
    if report.failed:
        click.echo(f"{report.failed} document(s) failed; see the report's errors"
                   + (f" and {errors_out}" if errors_out else " (--errors-out FILE lists all)"),
                   err=True)
        sys.exit(1)


def _load_model(spec, device: str | None):
    from milco_os.pruning import Pruning

    try:
        pruning = Pruning.parse(spec.prune)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--prune") from None
    if not spec.model:
        return None, pruning
    from milco_os.encoder import SparseEncoder

    if not Path(spec.model).exists():
        click.echo(f"model {spec.model!r} is not a local folder: fetching it from the hub",
                   err=True)
    return SparseEncoder.from_pretrained(spec.model, device=device), pruning
