"""`milco-os evaluate`: effectiveness and latency of MILCO indexes on a test collection.

A thin layer over :mod:`milco_os.evaluation`: one run evaluates every combination of
the sweep options (query pruning, alpha, views, mode, and document pruning through
separate indexes) with :class:`~milco_os.evaluation.Sweep`, prints a table, writes TREC
runs and JSON summaries with ``--run-out``, and PNG plots with ``--plots``.
``--compare`` scores existing run files side by side instead.
"""

from __future__ import annotations

from pathlib import Path

import click

from milco_os.cli.options import BACKEND, UNIT_INTERVAL, connection_options
from milco_os.engines.connection import ConnectionSettings
from milco_os.evaluation.sweep import MODE_CHOICES


@click.command()
@click.option("--dataset", "dataset_spec", required=True,
              help="BEIR folder, queries=FILE,qrels=FILE[,corpus=FILE], or hub:ID / miracl / "
                   "mkqa / mldr (MTEB layout, needs the hub).")
@click.option("--index", "index", help="Index to search; `{lang}` in the name means one index "
                                       "per language (e.g. miracl-{lang}).")
@click.option("--model", help="Query encoder [default: the model recorded in the index].")
@click.option("--metrics", multiple=True, default=("nDCG@10", "R@100"), show_default=True,
              help="ir-measures names, comma-separated or repeated.")
@click.option("--langs", multiple=True, help="Languages to evaluate (comma-separated).")
@click.option("--split", help="Qrels split [default: test, else dev].")
@click.option("--lang", help="Language of queries that carry none.")
@click.option("--k", "k", type=click.IntRange(min=1), default=100, show_default=True,
              help="Documents retrieved per query.")
@click.option("--query-prune", multiple=True, default=("none",), show_default=True,
              help="Query pruning levels to sweep: none, topk:K, mass:P, threshold:T.")
@click.option("--doc-prune", multiple=True, default=("none",), show_default=True,
              help="Document pruning levels to sweep, each in its own index INDEX-<level> "
                   "(built from the corpus with --build).")
@click.option("--alpha", "alphas", multiple=True, type=UNIT_INTERVAL,
              help="Pivot weight alpha to sweep (echo gets 1-alpha) [default: the plain sum].")
@click.option("--views", multiple=True, default=("both",), show_default=True,
              help="Views to sweep: `both` (pivot + LexEcho), `pivot` and/or `echo` (that "
                   "view alone).")
@click.option("--mode", "modes", multiple=True, default=("default",), show_default=True,
              help=f"Search modes to sweep, of {', '.join(MODE_CHOICES)}; `bm25` is the BM25 "
                   "baseline on the same index's text.")
@click.option("--lowercase", is_flag=True,
              help="Lower-case queries (and documents, when --build indexes them), as the "
                   "paper's evaluation did.")
@click.option("--build", is_flag=True, help="Index the dataset's corpus first when an index "
                                            "is missing (needs --model).")
@click.option("--passage-window", type=click.IntRange(min=1),
              help="With --build: split documents into passages of this many tokens (MLDR: "
                   "512); a document scores as its best passage.")
@click.option("--max-length", type=click.IntRange(min=1),
              help="With --build: tokens per passage given to the model.")
@click.option("--run-out", type=click.Path(file_okay=False, path_type=Path),
              help="Write <system>.run (TREC) and <system>.json per system, and summary.json.")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path),
              help="Write PNG plots (metric vs terms per document, latency vs query pruning).")
@click.option("--compare", "compare_runs", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Score these TREC run files side by side instead of searching.")
@click.option("--device", help="Torch device for the query encoder.")
@BACKEND
@connection_options
def evaluate(dataset_spec: str, index: str | None, model: str | None, metrics: tuple[str, ...],
             langs: tuple[str, ...], split: str | None, lang: str | None, k: int,
             query_prune: tuple[str, ...], doc_prune: tuple[str, ...], alphas: tuple[float, ...],
             views: tuple[str, ...], modes: tuple[str, ...], lowercase: bool, build: bool,
             passage_window: int | None, max_length: int | None, run_out: Path | None,
             plots: Path | None, compare_runs: tuple[Path, ...], device: str | None,
             backend: str, settings: ConnectionSettings) -> None:
    """Evaluate retrieval on a test collection with ir-measures.

    Example: milco-os evaluate --index miracl-{lang} --dataset miracl --langs sw,te
    --query-prune none,topk:50,mass:0.5 --mode default,bm25 --run-out runs/
    """
    _evaluate(dataset_spec, index, model, _csv(metrics), _csv(langs), split, lang, k,
              _csv(query_prune), _csv(doc_prune), alphas, _csv(views), _csv(modes),
              lowercase, build, passage_window, max_length, run_out, plots, compare_runs,
              device, backend, settings)


def _evaluate(dataset_spec: str, index: str | None, model: str | None, metrics: list[str],
              langs: list[str], split: str | None, lang: str | None, k: int,
              query_prune: list[str], doc_prune: list[str], alphas: tuple[float, ...],
              views: list[str], modes: list[str], lowercase: bool, build: bool,
              passage_window: int | None, max_length: int | None, run_out: Path | None,
              plots: Path | None, compare_runs: tuple[Path, ...], device: str | None,
              backend: str, settings: ConnectionSettings) -> None:
    from milco_os import evaluation as ev
    from milco_os.engines import open_engine
    from milco_os.evaluation.datasets import load_dataset

    ev.parse_metrics(metrics)
    dataset = load_dataset(dataset_spec, langs=langs or None, split=split, lang=lang)
    dataset = dataset.lowercased() if lowercase else dataset
    click.echo(f"{dataset.name}: {len(dataset.queries)} queries, {len(dataset.qrels)} judged, "
               f"languages {', '.join(str(x) for x in dataset.languages())}", err=True)
    if compare_runs:
        click.echo(ev.compare(ev.compare_runs(compare_runs, dataset, metrics)))
        return
    if not index:
        raise click.UsageError("give --index to search, or --compare RUN... to score runs")
    systems = ev.sweep_systems(index, doc_prune, query_prune, alphas, views, modes)
    sweep = ev.Sweep(open_engine(settings), dataset, model=model, device=device, backend=backend,
                     metrics=metrics, k=k,
                     build=ev.BuildOptions(passage_window, max_length) if build else None,
                     log=lambda line: click.echo(line, err=True))
    results = sweep.run_all(systems)
    evaluations = {name: r.evaluation for name, r in results.items()}
    click.echo(ev.sweep_table(results, metrics))
    if len(systems) == 1:
        click.echo("\n" + next(iter(evaluations.values())).table())
    elif len(dataset.languages()) > 1:
        for metric in metrics:
            click.echo("\n" + ev.language_table(evaluations, metric))
    if run_out:
        path = ev.write_sweep(results, run_out, dataset, dataset_spec)
        click.echo(f"wrote {len(results)} run(s) and {path}", err=True)
    if plots:
        for path in ev.plot_sweep(results, metrics[0], plots):
            click.echo(f"wrote {path}", err=True)


def _csv(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]
