"""Retrieval effectiveness with ir-measures: runs, per-language tables, TREC run files.

:func:`evaluate` sends every query through the search path users use (a
:class:`~milco_os.search.Searcher` over a cluster or the local engine, or
:class:`BM25Searcher` for the BM25 baseline), or takes a finished run, and
scores it with `ir-measures <https://ir-measur.es>`_. Scores are given per query,
per language (mean over that language's queries) and as the average over
languages (the paper's tables average languages, not queries); ``overall`` is
the mean over all queries. Passages of one document count once, with the best
passage's score (the paper's "max passage" for long documents).

>>> import tempfile
>>> from milco_os.engines.local import LocalEngine
>>> from milco_os.sparse import SparseVector, SparseView
>>> from milco_os.datasets import Query
>>> engine = LocalEngine(tempfile.mkdtemp())
>>> engine.create_index("news", meta={"model": "m", "views": ["pivot"], "pruning": "none"})
>>> _ = engine.bulk_index("news", [("d1#0", {"doc_id": "d1", "passage": 0,
...                                          "pivot": {"dog": 2.0}})])
>>> class Encoder:  # stands in for milco_os.encoder.SparseEncoder
...     def encode(self, texts, kind="query"):
...         return [SparseVector(SparseView.from_pairs([(1, "dog", 0.5)])) for _ in texts]
>>> result = evaluate(Searcher(engine, "news", Encoder()), [Query("q1", "狗", "zh")],
...                   {"q1": {"d1": 1}}, metrics=["nDCG@10"])
>>> result.average, result.run
({'nDCG@10': 1.0}, {'q1': {'d1': 1.0}})
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ir_measures
import numpy as np

from milco_os.datasets import Qrels, Query
from milco_os.engines.base import Engine, EngineError, Hit
from milco_os.query import HIT_SOURCE_EXCLUDES, count_terms, sent_terms
from milco_os.search import Searcher

Run = dict[str, dict[str, float]]  # query id -> {document id: score}
DEFAULT_METRICS = ("nDCG@10", "R@100")
BM25_FIELDS = ("title", "text")


class Retriever(Protocol):
    """What :func:`evaluate` searches with: :class:`Searcher` or :class:`BM25Searcher`."""

    def search(self, texts: Sequence[str], k: int = 10) -> list[list[Hit]]: ...


class BM25Searcher:
    """The BM25 baseline: a ``multi_match`` on the index's ``title`` and ``text`` fields.

    Needs a cluster engine (the local engine has no text index). ``collapse``: one
    hit per ``doc_id`` (its best passage), for indexes of split documents.
    """

    def __init__(self, engine: Engine, index: str, fields: Sequence[str] = BM25_FIELDS,
                 collapse: bool = False) -> None:
        if not hasattr(engine, "raw_search"):
            raise EngineError(f"BM25 needs OpenSearch or Elasticsearch; the {engine.name} "
                              "engine has no text index")
        self.engine, self.index, self.fields = engine, index, list(fields)
        self.collapse = collapse

    def body(self, text: str, k: int) -> dict[str, Any]:
        body = {"size": k, "track_total_hits": False,
                "_source": {"excludes": HIT_SOURCE_EXCLUDES},
                "query": {"multi_match": {"query": text, "fields": self.fields}}}
        if self.collapse:
            body["collapse"] = {"field": "doc_id"}
        return body

    def search(self, texts: Sequence[str], k: int = 10) -> list[list[Hit]]:
        return [self.engine.raw_search(self.index, self.body(t, k)) for t in texts]


@dataclass
class Retrieval:
    """A run with what it cost: per-query engine latency (ms) and query terms sent."""

    run: Run = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    query_terms: list[int] = field(default_factory=list)
    encode_seconds: float = 0.0

    def extend(self, other: Retrieval) -> None:
        self.run.update(other.run)
        self.latencies_ms += other.latencies_ms
        self.query_terms += other.query_terms
        self.encode_seconds += other.encode_seconds

    def cost(self) -> dict[str, float]:
        """Latency p50/p95 (ms), queries per second (one client), mean query terms."""
        if not self.latencies_ms:
            return {}
        lat = np.array(self.latencies_ms)
        stats = {"latency_p50_ms": float(np.percentile(lat, 50)),
                 "latency_p95_ms": float(np.percentile(lat, 95)),
                 "qps": float(1000.0 / lat.mean()) if lat.mean() > 0 else 0.0}
        if self.query_terms:
            stats["query_terms_mean"] = float(np.mean(self.query_terms))
        if self.encode_seconds:
            stats["encode_ms_per_query"] = 1000.0 * self.encode_seconds / len(lat)
        return stats


def best_per_document(hits: Iterable[Hit]) -> dict[str, float]:
    """``{doc_id: best passage score}``."""
    scores: dict[str, float] = {}
    for hit in hits:
        if hit.score > scores.get(hit.doc_id, float("-inf")):
            scores[hit.doc_id] = hit.score
    return scores


def retrieve(retriever: Retriever, queries: Sequence[Query], k: int = 100,
             batch_size: int = 32) -> Retrieval:
    """Search every query as :meth:`Searcher.search` does, timing each search on its own
    (queries are encoded in batches first; the encoding time is reported apart)."""
    result = Retrieval()
    for start in range(0, len(queries), batch_size):
        batch = queries[start:start + batch_size]
        texts = [q.text for q in batch]
        if isinstance(retriever, Searcher):
            tick = time.perf_counter()
            vectors = retriever.encode(texts)
            result.encode_seconds += time.perf_counter() - tick
            limit = retriever.engine.max_clause_count
            result.query_terms += [count_terms(sent_terms(retriever.options.query(v, t), limit))
                                   for v, t in zip(vectors, texts, strict=True)]
            calls = [lambda v=v, t=t: retriever.search_vector(v, t, k)
                     for v, t in zip(vectors, texts, strict=True)]
        else:
            calls = [lambda t=t: retriever.search([t], k)[0] for t in texts]
        for query, call in zip(batch, calls, strict=True):
            tick = time.perf_counter()
            hits = call()
            result.latencies_ms.append(1000.0 * (time.perf_counter() - tick))
            result.run[query.id] = best_per_document(hits)
    return result


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
    measures = [ir_measures.parse_measure(m) for m in metrics]
    retrieval = _run_of(searcher_or_runs, queries, k)
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


# ------------------------------------------------------------------ run files


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | Path,
                   tag: str = "milco-os") -> Path:
    """``qid Q0 docid rank score tag`` lines, best first (ties by document id)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for qid in sorted(run):
            ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (doc_id, score) in enumerate(ranked, 1):
                if any(c.isspace() for c in qid + doc_id):
                    raise ValueError(f"query {qid!r} / document {doc_id!r}: ids with spaces "
                                     "cannot be written to a TREC run file")
                out.write(f"{qid} Q0 {doc_id} {rank} {score!r} {tag}\n")
    return path


def read_trec_run(path: str | Path) -> Run:
    """A TREC run file as ``{qid: {docid: score}}``."""
    run: Run = {}
    for doc in ir_measures.read_trec_run(str(path)):
        run.setdefault(doc.query_id, {})[doc.doc_id] = float(doc.score)
    return run


def save_evaluation(evaluation: Evaluation, out_dir: str | Path, name: str,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``<name>.run`` (TREC) and ``<name>.json`` (summary, per query); return paths."""
    out = Path(out_dir)
    run_path = write_trec_run(evaluation.run, out / f"{name}.run", tag=name)
    summary = {"name": name, **evaluation.summary(), **(extra or {}),
               "per_query": evaluation.per_query}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return {"run": run_path, "summary": json_path}


# ------------------------------------------------------------------ tables


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> str:
    """A plain-text table, floats with ``digits`` decimals."""

    def cell(value: Any) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    cells = [[str(h) for h in header]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare(evaluations: Mapping[str, Evaluation], digits: int = 1) -> str:
    """Systems side by side: one row per language (and ``avg``), one column per system
    and metric (x100), plus each system's latency when it was measured."""
    names = list(evaluations)
    metrics = evaluations[names[0]].metrics
    langs = sorted({lang for e in evaluations.values() for lang in e.per_language})
    header = ["lang", *(f"{n} {m}" for n in names for m in metrics)]
    rows = []
    for lang in [*langs, "avg"]:
        row: list[Any] = [lang]
        for name in names:
            scores = evaluations[name].average if lang == "avg" \
                else evaluations[name].per_language.get(lang, {})
            row += [100 * scores[m] if m in scores else "-" for m in metrics]
        rows.append(row)
    table = format_table(header, rows, digits)
    costs = [(n, e.cost) for n, e in evaluations.items() if e.cost]
    if costs:
        table += "\n\n" + format_table(
            ["system", "p50 ms", "p95 ms", "QPS", "q terms"],
            [[n, c["latency_p50_ms"], c["latency_p95_ms"], c["qps"],
              c.get("query_terms_mean", "-")] for n, c in costs], digits=1)
    return table


def language_table(evaluations: Mapping[str, Evaluation], metric: str, digits: int = 1) -> str:
    """One ``metric`` (x100) for many systems: a row per system, a column per language,
    then the average over languages."""
    langs = sorted({lang for e in evaluations.values() for lang in e.per_language})
    rows = [[name, *(100 * e.per_language[lang][metric] if lang in e.per_language else "-"
                     for lang in langs), 100 * e.average[metric]]
            for name, e in evaluations.items()]
    return format_table([metric, *langs, "avg"], rows, digits)
