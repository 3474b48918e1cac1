"""Scores of a run with ir-measures: per query, per language, averaged over languages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ir_measures
import numpy as np

from milco_os.core.errors import InputError
from milco_os.evaluation.datasets import Qrels, Query
from milco_os.evaluation.retrieval import Retrieval, Retriever, Run, retrieve
from milco_os.evaluation.tables import format_table

DEFAULT_METRICS = ("nDCG@10", "R@100")


def parse_metrics(names: Sequence[str]) -> list[Any]:
    """ir-measures measures for ``names``; an unknown name is an :class:`InputError`."""
    measures = []
    for name in names:
        try:
            measures.append(ir_measures.parse_measure(name))
        except (ValueError, NameError) as exc:
            raise InputError(f"metric {name!r}: {exc}") from None
    return measures


@dataclass
class Evaluation:
    """Scores of one run: per query, per language, averaged over languages, overall."""

    metrics: list[str]
    per_query: dict[str, dict[str, float]]
    languages: dict[str, str]  # query id -> language ("-" when unknown)
    run: Run
    cost: dict[str, float] = field(default_factory=dict)

    @property
    def per_language(self) -> dict[str, dict[str, float]]:
        groups: dict[str, list[str]] = {}
        for qid in self.per_query:
            groups.setdefault(self.languages.get(qid, "-"), []).append(qid)
        return {lang: {m: float(np.mean([self.per_query[q][m] for q in ids]))
                       for m in self.metrics} for lang, ids in sorted(groups.items())}

    @property
    def average(self) -> dict[str, float]:
        """Mean over languages of the per-language means."""
        per_lang = self.per_language
        return {m: float(np.mean([s[m] for s in per_lang.values()])) if per_lang else 0.0
                for m in self.metrics}

    @property
    def overall(self) -> dict[str, float]:
        """Mean over all evaluated queries."""
        return {m: float(np.mean([s[m] for s in self.per_query.values()]))
                if self.per_query else 0.0 for m in self.metrics}

    def table(self, digits: int = 1) -> str:
        """Languages as rows, metrics as columns (x100), then the average over languages."""
        rows = [[lang, *(100 * scores[m] for m in self.metrics)]
                for lang, scores in self.per_language.items()]
        rows.append(["avg", *(100 * self.average[m] for m in self.metrics)])
        return format_table(["lang", *self.metrics], rows, digits)

    def summary(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "average": self.average, "overall": self.overall,
                "per_language": self.per_language, "queries": len(self.per_query),
                "cost": self.cost}


def evaluate(
    searcher_or_runs: Retriever | Mapping[str, Retriever] | Mapping[str, Mapping[str, float]],
    queries: Sequence[Query] | Mapping[str, str],
    qrels: Qrels,
    metrics: Sequence[str] = DEFAULT_METRICS,
    k: int = 100,
) -> Evaluation:
    """Score a retriever (or ``{lang: retriever}``, one index per language, or a finished
    run) on ``queries`` against ``qrels`` with ir-measures.

    Only queries that have qrels are scored; a judged query that retrieved nothing
    scores 0 (ir-measures' convention).
    """
    queries = _as_queries(queries)
    measures = parse_metrics(metrics)
    retrieval = _run_of(searcher_or_runs, queries, k)
    return score_retrieval(retrieval, queries, qrels, measures)


def score_retrieval(retrieval: Retrieval, queries: Sequence[Query], qrels: Qrels,
                    measures: Sequence[Any]) -> Evaluation:
    """The :class:`Evaluation` of a finished retrieval (run and cost)."""
    judged = {q.id for q in queries if q.id in qrels}
    per_query: dict[str, dict[str, float]] = {qid: {} for qid in judged}
    judged_qrels = {qid: dict(qrels[qid]) for qid in judged}
    judged_run = {qid: dict(docs) for qid, docs in retrieval.run.items() if qid in judged}
    for metric in ir_measures.iter_calc(measures, judged_qrels, judged_run):
        per_query[metric.query_id][str(metric.measure)] = float(metric.value)
    names = [str(m) for m in measures]
    for scores in per_query.values():
        missing = [n for n in names if n not in scores]
        if missing:  # ir-measures yields nothing at all when the whole run is empty
            scores.update(dict.fromkeys(missing, 0.0))
    languages = {q.id: q.lang or "-" for q in queries}
    return Evaluation(names, per_query, languages, retrieval.run, retrieval.cost())


def _as_queries(queries: Sequence[Query] | Mapping[str, str]) -> list[Query]:
    if isinstance(queries, Mapping):
        return [Query(str(qid), text) for qid, text in queries.items()]
    return list(queries)


def _run_of(source: Any, queries: list[Query], k: int) -> Retrieval:
    if isinstance(source, Mapping):
        values = list(source.values())
        if not values or isinstance(values[0], Mapping):
            return Retrieval(run={q: dict(d) for q, d in source.items()})
        total = Retrieval()
        for lang, retriever in source.items():
            part = [q for q in queries if q.lang == lang]
            if part:
                total.extend(retrieve(retriever, part, k))
        return total
    return retrieve(source, queries, k)
