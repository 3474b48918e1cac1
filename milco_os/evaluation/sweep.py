"""Sweeps: many systems (document pruning x mode x alpha x query pruning x views) scored
on one collection, each through the search path users use.

>>> [s.name for s in sweep_systems("news", query_prunes=["none", "topk:50"],
...                                 views=["both", "echo"], modes=["default", "bm25"])]
['milco', 'echo-only', 'q=topk:50', 'q=topk:50 echo-only', 'bm25']
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from milco_os.core.errors import EngineError, InputError, MilcoOSError
from milco_os.engines.base import Engine
from milco_os.evaluation.bm25 import BM25Searcher
from milco_os.evaluation.datasets import EvalDataset
from milco_os.evaluation.runfiles import read_trec_run, save_evaluation
from milco_os.evaluation.scoring import DEFAULT_METRICS, Evaluation, evaluate, parse_metrics
from milco_os.evaluation.tables import format_table
from milco_os.index.compatibility import model_for_index
from milco_os.pipeline.search import QueryEncoder, Searcher, SearchOptions
from milco_os.vectors.pruning import Pruning
from milco_os.vectors.sparse import SparseVector, SparseView

VIEW_CHOICES = ("both", "pivot", "echo")
MODE_CHOICES = ("default", "two-phase", "hybrid", "bm25")
TERMS_SAMPLE = 200  # documents sampled to measure an index's terms per document
VIEW_LABELS = {"both": "", "pivot": "pivot-only", "echo": "echo-only"}


class SweepError(MilcoOSError):
    """A system of a sweep that cannot be evaluated (missing index, engine failure)."""


@dataclass(frozen=True)
class System:
    """One point of the sweep: which index, and how queries are built."""

    index: str  # may hold "{lang}": one index per language
    doc_prune: Pruning = field(default_factory=Pruning)
    mode: str = "default"
    alpha: float | None = None
    query_prune: Pruning = field(default_factory=Pruning)
    views: str = "both"

    @property
    def name(self) -> str:
        if self.mode == "bm25":
            return f"bm25 doc={self.doc_prune}" if self.doc_prune.method != "none" else "bm25"
        parts = [f"doc={self.doc_prune}", f"q={self.query_prune}",
                 f"alpha={self.alpha}" if self.alpha is not None else "",
                 VIEW_LABELS[self.views], self.mode]
        defaults = {"doc=none", "q=none", "", "default"}
        return " ".join(p for p in parts if p not in defaults) or "milco"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=-]+", "_", self.name)

    def query_vector(self, vector: SparseVector) -> SparseVector:
        """``vector`` pruned (query pruning) and reduced to this system's views."""
        vector = self.query_prune.apply(vector)
        if self.views == "pivot":
            return SparseVector(vector.pivot)
        if self.views == "echo":
            return SparseVector(SparseView.empty(), vector.echo)
        return vector


@dataclass(frozen=True)
class BuildOptions:
    """How a missing index is built from the collection's corpus."""

    passage_window: int | None = None
    max_length: int | None = None


@dataclass
class SweepResult:
    """One system's evaluation, with the indexes it searched and their terms per document."""

    system: System
    evaluation: Evaluation
    indexes: list[str]
    doc_terms_mean: float | None = None

    def info(self) -> dict[str, Any]:
        return {"doc_terms_mean": self.doc_terms_mean, "indexes": self.indexes,
                "slug": self.system.slug, **asdict(self.system),
                "doc_prune": str(self.system.doc_prune),
                "query_prune": str(self.system.query_prune)}


def index_for(base: str, doc_prune: Pruning) -> str:
    """The index holding documents pruned with ``doc_prune`` (a suffix of the base name)."""
    if doc_prune.method == "none":
        return base
    return f"{base}-{re.sub(r'[^a-z0-9]+', '', str(doc_prune))}"


def check_choices(values: Iterable[str], allowed: Sequence[str], option: str) -> list[str]:
    """``values`` if each is one of ``allowed``, else an :class:`InputError` naming ``option``."""
    chosen = list(values)
    for value in chosen:
        if value not in allowed:
            raise InputError(f"{option}: {value!r} is not one of {', '.join(allowed)}")
    return chosen


def sweep_systems(index: str, doc_prunes: Sequence[str] = ("none",),
                  query_prunes: Sequence[str] = ("none",), alphas: Sequence[float] = (),
                  views: Sequence[str] = ("both",), modes: Sequence[str] = ("default",)
                  ) -> list[System]:
    """Every combination, in a stable order; BM25 once per document-pruning level. Each
    pruning spec is parsed here, once."""
    check_choices(views, VIEW_CHOICES, "views")
    check_choices(modes, MODE_CHOICES, "mode")
    doc_prunes, query_prunes = _parsed(doc_prunes), _parsed(query_prunes)
    systems: list[System] = []
    for doc, mode in itertools.product(doc_prunes, modes):
        if mode == "bm25":
            systems.append(System(index, doc, mode))
            continue
        for alpha, prune, view in itertools.product(alphas or (None,), query_prunes, views):
            systems.append(System(index, doc, mode, alpha, prune, view))
    return list(dict.fromkeys(systems))


def _parsed(specs: Sequence[str | Pruning]) -> list[Pruning]:
    rules = []
    for spec in specs:
        try:
            rules.append(spec if isinstance(spec, Pruning) else Pruning.parse(spec))
        except ValueError as exc:
            raise InputError(f"pruning {spec!r}: {exc}") from None
    return rules


class Sweep:
    """Evaluates systems on one collection, opening encoders and indexes once.

    ``model``: the query encoder (and, with ``build``, the document encoder) by folder or
    name [default: the model each index records]; ``encoder``: an encoder object used
    instead of loading ``model`` (which then only names the model indexes record).
    ``backend``: what runs the model (:func:`milco_os.encoders.load_encoder`; ``auto``:
    ONNX Runtime for queries, torch for documents). ``build``: index the collection's
    corpus when an index is missing. ``log`` receives
    progress lines.
    """

    def __init__(self, engine: Engine, dataset: EvalDataset, *, model: str | None = None,
                 encoder: QueryEncoder | None = None, device: str | None = None,
                 backend: str = "auto", metrics: Sequence[str] = DEFAULT_METRICS, k: int = 100,
                 build: BuildOptions | None = None,
                 log: Callable[[str], None] = lambda line: None) -> None:
        parse_metrics(metrics)
        self.engine, self.dataset, self.model, self.device = engine, dataset, model, device
        self.backend = backend
        self.metrics, self.k, self.build, self.log = list(metrics), k, build, log
        # (model, kind) -> encoder; None -> the encoder given
        self.encoders: dict[Any, Any] = {None: encoder} if encoder is not None else {}
        self.doc_terms: dict[str, float | None] = {}

    def run_all(self, systems: Iterable[System]) -> dict[str, SweepResult]:
        return {s.name: self.run(s) for s in systems}

    def run(self, system: System) -> SweepResult:
        base = index_for(system.index, system.doc_prune)
        by_lang = {lang: base.replace("{lang}", lang or "") for lang in self.dataset.languages()}
        try:
            for lang, name in by_lang.items():
                self._ensure_index(name, lang, system.doc_prune)
            retrievers = {lang: self._retriever(system, name) for lang, name in by_lang.items()}
            self.log(f"evaluating {system.name} on {sorted(set(by_lang.values()))}")
            result = evaluate(retrievers, self.dataset.queries, self.dataset.qrels,
                              self.metrics, self.k)
        except (EngineError, FileNotFoundError) as exc:
            raise SweepError(f"{system.name}: {exc}") from None
        terms = [t for t in (self.doc_terms.get(n) for n in by_lang.values()) if t is not None]
        return SweepResult(system, result, sorted(set(by_lang.values())),
                           sum(terms) / len(terms) if terms else None)

    def _retriever(self, system: System, index: str) -> Any:
        # Indexes of split documents return one hit per document: its best passage.
        collapse = bool((self.engine.meta(index).get("passages") or {}).get("window"))
        if system.mode == "bm25":
            return BM25Searcher(self.engine, index, collapse=collapse)
        options = SearchOptions(alpha=system.alpha, mode=system.mode,
                                prune=system.query_vector, collapse=collapse)
        return Searcher(self.engine, index, self._encoder(index), options)

    def _encoder(self, index: str) -> Any:
        if None in self.encoders:
            return self.encoders[None]
        model, _ = model_for_index(index, self.engine.meta(index), self.model)
        return self._load(model)

    def _load(self, model: str, kind: str = "query") -> Any:
        if (model, kind) not in self.encoders:
            from milco_os.encoders import load_encoder

            self.encoders[model, kind] = load_encoder(model, self.backend, self.device, kind)
        return self.encoders[model, kind]

    def _ensure_index(self, index: str, lang: str | None, doc_prune: Pruning) -> None:
        if index in self.doc_terms:
            return
        if self.engine.index_exists(index):
            self.doc_terms[index] = sample_doc_terms(self.engine, index)
            return
        if self.build is None:
            raise SweepError(f"index {index!r} does not exist: ingest it, or build it from "
                             "the collection's corpus (--build, with --model)")
        if not self.model:
            raise InputError("building an index needs a model (--model)")
        from milco_os.index.spec import IngestSpec, Passages
        from milco_os.pipeline.ingest import Ingestor

        spec = IngestSpec(index=index, model=self.model, prune=doc_prune, lang=lang,
                          max_length=self.build.max_length,
                          passages=Passages(window=self.build.passage_window))
        self.log(f"building index {index!r} (prune {doc_prune}"
                 f"{', lower-cased' if self.dataset.lowercase else ''})")
        encoder = self.encoders[None] if None in self.encoders else \
            self._load(self.model, "document")
        corpus = self.dataset.corpus(lang)()
        report = Ingestor(self.engine, spec, encoder, progress=False).run(corpus)
        stats = report.term_stats()
        self.doc_terms[index] = sum(v["mean"] for v in stats.values()) if stats else None


def sample_doc_terms(engine: Engine, index: str) -> float | None:
    """Mean pivot + echo terms over a random sample of the index's documents."""
    sources = engine.sample_sources(index, TERMS_SAMPLE)
    if not sources:
        return None
    return sum(len(s.get("pivot", {})) + len(s.get("echo", {})) for s in sources) / len(sources)


def compare_runs(paths: Sequence[str | Path], dataset: EvalDataset,
                 metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, Evaluation]:
    """Existing TREC run files scored on ``dataset``, keyed by file stem."""
    return {Path(p).stem: evaluate(read_trec_run(p), dataset.queries, dataset.qrels, metrics)
            for p in paths}


def sweep_table(results: Mapping[str, SweepResult], metrics: Sequence[str]) -> str:
    """One row per system: average over languages (x100), terms and latency."""
    rows = []
    for name, result in results.items():
        cost, evaluation = result.evaluation.cost, result.evaluation
        rows.append([name, *(100 * evaluation.average[m] for m in metrics),
                     cost.get("query_terms_mean", "-"),
                     result.doc_terms_mean if result.doc_terms_mean is not None else "-",
                     cost.get("latency_p50_ms", "-"), cost.get("latency_p95_ms", "-"),
                     cost.get("qps", "-")])
    return format_table(["system", *metrics, "q terms", "doc terms", "p50 ms", "p95 ms", "QPS"],
                        rows)


def write_sweep(results: Mapping[str, SweepResult], out: str | Path, dataset: EvalDataset,
                dataset_spec: str) -> Path:
    """``<slug>.run`` and ``<slug>.json`` per system, and ``summary.json``; its path."""
    from milco_os import __version__

    out = Path(out)
    summary: dict[str, Any] = {"dataset": dataset_spec, "lowercase": dataset.lowercase,
                               "milco_os_version": __version__, "systems": {}}
    for name, result in results.items():
        info = result.info()
        paths = save_evaluation(result.evaluation, out, info["slug"], info)
        summary["systems"][name] = {**result.evaluation.summary(), **info,
                                    "run_file": str(paths["run"])}
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return path
