"""`milco-os evaluate`: effectiveness and latency of MILCO indexes on a test collection.

One run evaluates every combination of the sweep options (query pruning, alpha,
views, mode, and document pruning through separate indexes), prints a table,
writes TREC runs and JSON summaries with ``--run-out``, and PNG plots with
``--plots``. ``--compare`` scores existing run files side by side instead.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from milco_os.cli.options import connection_options
from milco_os.connection import ConnectionSettings

VIEW_CHOICES = ("both", "pivot")
MODE_CHOICES = ("default", "two-phase", "hybrid", "bm25")
TERMS_SAMPLE = 200  # documents sampled to measure an index's terms per document


@dataclass(frozen=True)
class System:
    """One point of the sweep: which index, and how queries are built."""

    index: str  # may hold "{lang}": one index per language
    doc_prune: str = "none"
    mode: str = "default"
    alpha: float | None = None
    query_prune: str = "none"
    views: str = "both"

    @property
    def name(self) -> str:
        if self.mode == "bm25":
            return f"bm25 doc={self.doc_prune}" if self.doc_prune != "none" else "bm25"
        parts = [f"doc={self.doc_prune}", f"q={self.query_prune}",
                 f"alpha={self.alpha}" if self.alpha is not None else "",
                 "pivot-only" if self.views == "pivot" else "", self.mode]
        defaults = {"doc=none", "q=none", "", "default"}
        return " ".join(p for p in parts if p not in defaults) or "milco"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=-]+", "_", self.name)


def _csv(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _index_for(base: str, doc_prune: str) -> str:
    """The index holding documents pruned with ``doc_prune`` (a suffix of the base name)."""
    if doc_prune == "none":
        return base
    return f"{base}-{re.sub(r'[^a-z0-9]+', '', doc_prune.lower())}"


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
@click.option("--alpha", "alphas", multiple=True, type=float,
              help="Pivot weight alpha to sweep (echo gets 1-alpha) [default: the plain sum].")
@click.option("--views", multiple=True, default=("both",), show_default=True,
              help="Views to sweep: `pivot` (pivot view only) and/or `both` (pivot + LexEcho).")
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
@connection_options
def evaluate(dataset_spec: str, index: str | None, model: str | None, metrics: tuple[str, ...],
             langs: tuple[str, ...], split: str | None, lang: str | None, k: int,
             query_prune: tuple[str, ...], doc_prune: tuple[str, ...], alphas: tuple[float, ...],
             views: tuple[str, ...], modes: tuple[str, ...], lowercase: bool, build: bool,
             passage_window: int | None, max_length: int | None, run_out: Path | None,
             plots: Path | None, compare_runs: tuple[Path, ...], device: str | None,
             settings: ConnectionSettings) -> None:
    """Evaluate retrieval on a test collection with ir-measures.

    Example: milco-os evaluate --index miracl-{lang} --dataset miracl --langs sw,te
    --query-prune none,topk:50,mass:0.5 --mode default,bm25 --run-out runs/
    """
    from milco_os.datasets import DatasetError, load_dataset
    from milco_os.evaluation import compare, language_table, read_trec_run
    from milco_os.evaluation import evaluate as score

    metric_names = _csv(metrics)
    _check_metrics(metric_names)
    try:
        dataset = load_dataset(dataset_spec, langs=_csv(langs) or None, split=split, lang=lang)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    dataset = dataset.lowercased() if lowercase else dataset
    click.echo(f"{dataset.name}: {len(dataset.queries)} queries, {len(dataset.qrels)} judged, "
               f"languages {', '.join(str(x) for x in dataset.languages())}", err=True)
    if compare_runs:
        evaluations = {p.stem: score(read_trec_run(p), dataset.queries, dataset.qrels,
                                     metric_names) for p in compare_runs}
        click.echo(compare(evaluations))
        return
    if not index:
        raise click.UsageError("give --index to search, or --compare RUN... to score runs")
    systems = _systems(index, _csv(doc_prune), _csv(query_prune), alphas,
                       _choices(views, VIEW_CHOICES, "--views"),
                       _choices(modes, MODE_CHOICES, "--mode"))
    build_spec = {"passage_window": passage_window, "max_length": max_length} if build else None
    runner = _Runner(settings, dataset, model, device, metric_names, k, build_spec)
    results = {s.name: runner.run(s) for s in systems}
    evaluations = {name: e for name, (e, _) in results.items()}
    click.echo(_sweep_table(results, metric_names))
    if len(systems) == 1:
        click.echo("\n" + next(iter(evaluations.values())).table())
    elif len(dataset.languages()) > 1:
        for metric in metric_names:
            click.echo("\n" + language_table(evaluations, metric))
    if run_out:
        _write_runs(results, run_out, dataset, dataset_spec)
    if plots:
        for path in _plot(results, metric_names[0], plots):
            click.echo(f"wrote {path}", err=True)


def _choices(values: tuple[str, ...], allowed: tuple[str, ...], option: str) -> list[str]:
    chosen = _csv(values)
    for value in chosen:
        if value not in allowed:
            raise click.BadParameter(f"{value!r} is not one of {', '.join(allowed)}",
                                     param_hint=option)
    return chosen


def _check_metrics(names: list[str]) -> None:
    import ir_measures

    for name in names:
        try:
            ir_measures.parse_measure(name)
        except (ValueError, NameError) as exc:
            raise click.BadParameter(f"{name!r}: {exc}", param_hint="--metrics") from None


def _systems(index: str, doc_prunes: list[str], query_prunes: list[str],
             alphas: tuple[float, ...], views: list[str], modes: list[str]) -> list[System]:
    from milco_os.pruning import Pruning

    for spec in [*doc_prunes, *query_prunes]:
        try:
            Pruning.parse(spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--query-prune/--doc-prune") from None
    systems: list[System] = []
    for doc, mode in itertools.product(doc_prunes, modes):
        if mode == "bm25":
            systems.append(System(index, doc, mode))
            continue
        for alpha, prune, view in itertools.product(alphas or (None,), query_prunes, views):
            systems.append(System(index, doc, mode, alpha, prune, view))
    return list(dict.fromkeys(systems))


class _Runner:
    """Opens engines, encoders and indexes once, and evaluates one system at a time."""

    def __init__(self, settings: ConnectionSettings, dataset, model: str | None,
                 device: str | None, metrics: list[str], k: int,
                 build: dict[str, int | None] | None) -> None:
        from milco_os.engines import open_engine

        self.engine = open_engine(settings)
        self.dataset, self.model, self.device = dataset, model, device
        self.metrics, self.k, self.build = metrics, k, build
        self.encoders: dict[str, Any] = {}
        self.doc_terms: dict[str, float | None] = {}

    def run(self, system: System):
        from milco_os.engines import EngineError
        from milco_os.evaluation import evaluate

        base = _index_for(system.index, system.doc_prune)
        by_lang = {lang: base.replace("{lang}", lang or "") for lang in self.dataset.languages()}
        try:
            for lang, name in by_lang.items():
                self._ensure_index(name, lang, system.doc_prune)
            retrievers = {lang: self._retriever(system, name) for lang, name in by_lang.items()}
            click.echo(f"evaluating {system.name} on {sorted(set(by_lang.values()))}", err=True)
            result = evaluate(retrievers, self.dataset.queries, self.dataset.qrels,
                              self.metrics, self.k)
        except (EngineError, ValueError, FileNotFoundError) as exc:
            raise click.ClickException(f"{system.name}: {exc}") from None
        terms = [self.doc_terms.get(name) for name in by_lang.values()]
        known = [t for t in terms if t is not None]
        return result, {"doc_terms_mean": sum(known) / len(known) if known else None,
                        "indexes": sorted(set(by_lang.values())), "slug": system.slug,
                        **vars(system)}

    def _retriever(self, system: System, index: str):
        from milco_os.evaluation import BM25Searcher
        from milco_os.pruning import Pruning
        from milco_os.search import Searcher, SearchOptions
        from milco_os.sparse import SparseVector

        # Indexes of split documents return one hit per document: its best passage.
        collapse = bool((self.engine.meta(index).get("passages") or {}).get("window"))
        if system.mode == "bm25":
            return BM25Searcher(self.engine, index, collapse=collapse)
        rule = Pruning.parse(system.query_prune)
        pivot_only = system.views == "pivot"

        def prune(vector: SparseVector) -> SparseVector:
            vector = rule.apply(vector)
            return SparseVector(vector.pivot) if pivot_only else vector

        options = SearchOptions(alpha=system.alpha, mode=system.mode, prune=prune,
                                collapse=collapse)
        return Searcher(self.engine, index, self._encoder(index), options)

    def _encoder(self, index: str):
        model = self.model or self.engine.meta(index).get("model")
        if not model:
            raise click.UsageError(f"index {index!r} records no model: give --model")
        return self._load(model)

    def _load(self, model: str):
        if model not in self.encoders:
            from milco_os.encoder import SparseEncoder

            self.encoders[model] = SparseEncoder.from_pretrained(model, device=self.device)
        return self.encoders[model]

    def _ensure_index(self, index: str, lang: str | None, doc_prune: str) -> None:
        if index in self.doc_terms:
            return
        if self.engine.index_exists(index):
            self.doc_terms[index] = _sample_doc_terms(self.engine, index)
            return
        if self.build is None:
            raise click.ClickException(f"index {index!r} does not exist: ingest it, or pass "
                                       "--build (with --model) to index the dataset's corpus")
        if not self.model:
            raise click.UsageError("--build needs --model")
        from milco_os.ingest import Ingestor
        from milco_os.pruning import Pruning
        from milco_os.spec import IngestSpec, Passages

        spec = IngestSpec(index=index, model=self.model, prune=doc_prune, lang=lang,
                          max_length=self.build["max_length"],
                          passages=Passages(window=self.build["passage_window"]))
        click.echo(f"building index {index!r} (prune {doc_prune}"
                   f"{', lower-cased' if self.dataset.lowercase else ''})", err=True)
        report = Ingestor(self.engine, spec, self._load(self.model), Pruning.parse(doc_prune),
                          progress=False).run(self.dataset.corpus(lang)())
        stats = report.term_stats()
        self.doc_terms[index] = sum(v["mean"] for v in stats.values()) if stats else None


def _sample_doc_terms(engine, index: str) -> float | None:
    """Mean pivot + echo terms over a random sample of the index (cluster engines only)."""
    if not hasattr(engine, "raw_search"):
        return None
    body = {"size": TERMS_SAMPLE, "_source": ["pivot", "echo"],
            "query": {"function_score": {"query": {"match_all": {}},
                                         "random_score": {"seed": 0, "field": "_seq_no"}}}}
    hits = engine.raw_search(index, body)
    if not hits:
        return None
    return sum(len(h.source.get("pivot", {})) + len(h.source.get("echo", {})) for h in hits) \
        / len(hits)


def _sweep_table(results: dict[str, tuple[Any, dict[str, Any]]], metrics: list[str]) -> str:
    from milco_os.evaluation import format_table

    rows = []
    for name, (evaluation, info) in results.items():
        cost = evaluation.cost
        rows.append([name, *(100 * evaluation.average[m] for m in metrics),
                     cost.get("query_terms_mean", "-"),
                     info["doc_terms_mean"] if info["doc_terms_mean"] is not None else "-",
                     cost.get("latency_p50_ms", "-"), cost.get("latency_p95_ms", "-"),
                     cost.get("qps", "-")])
    return format_table(["system", *metrics, "q terms", "doc terms", "p50 ms", "p95 ms", "QPS"],
                        rows)


def _write_runs(results, out: Path, dataset, dataset_spec: str) -> None:
    from milco_os import __version__
    from milco_os.evaluation import save_evaluation

    summary = {"dataset": dataset_spec, "lowercase": dataset.lowercase,
               "milco_os_version": __version__, "systems": {}}
    for name, (evaluation, info) in results.items():
        paths = save_evaluation(evaluation, out, info["slug"], info)
        summary["systems"][name] = {**evaluation.summary(), **info,
                                    "run_file": str(paths["run"])}
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    click.echo(f"wrote {len(results)} run(s) and {path}", err=True)


def _plot(results, metric: str, out: Path) -> list[Path]:
    """Metric vs terms per document (document pruning), latency vs query terms."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.ClickException("--plots needs matplotlib (pip install matplotlib)") from None
    out.mkdir(parents=True, exist_ok=True)
    series: dict[str, list[tuple[float, float, float]]] = {}
    for evaluation, info in results.values():
        if info["mode"] == "bm25":
            continue
        label = f"{info['mode']} q={info['query_prune']}"
        series.setdefault(label, []).append((info["doc_terms_mean"] or 0.0,
                                             100 * evaluation.average[metric],
                                             info["doc_prune"]))
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        for x, y, name in points:
            ax.annotate(str(name), (x, y), fontsize=7)
    ax.set(xlabel="terms per document (pivot + echo)", ylabel=metric,
           title=f"{metric} vs document pruning")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "metric_vs_doc_terms.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    by_index: dict[str, list[tuple[float, float]]] = {}
    for evaluation, info in results.values():
        cost = evaluation.cost
        if "query_terms_mean" in cost:
            label = f"doc={info['doc_prune']} {info['mode']}"
            by_index.setdefault(label, []).append((cost["query_terms_mean"],
                                                   cost["latency_p50_ms"]))
    for label, points in by_index.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set(xlabel="query terms sent", ylabel="latency p50 (ms)",
           title="latency vs query pruning")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "latency_vs_query_terms.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
