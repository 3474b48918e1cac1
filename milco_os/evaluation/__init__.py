"""Retrieval effectiveness with ir-measures, as a Python API.

The data flow, one module per step:

- :mod:`~milco_os.evaluation.retrieval`: search every query (a
  :class:`~milco_os.pipeline.search.Searcher` over a cluster or the local engine, or
  :class:`BM25Searcher`), keep each document's best passage (the paper's "max
  passage" for long documents), time each search: a :class:`Retrieval`.
- :mod:`~milco_os.evaluation.bm25`: the BM25 baseline on the same index's text.
- :mod:`~milco_os.evaluation.exact`: exact in-memory scores of encoded vectors.
- :mod:`~milco_os.evaluation.scoring`: :func:`evaluate` scores a retriever or a
  finished run with `ir-measures <https://ir-measur.es>`_, per query, per language
  (mean over that language's queries) and averaged over languages (the paper's
  tables average languages, not queries); ``overall`` is the mean over all queries.
- :mod:`~milco_os.evaluation.sweep`: :class:`Sweep` evaluates many systems
  (document pruning x mode x alpha x query pruning x views), what
  ``milco-os evaluate`` runs; :func:`compare_runs` scores TREC run files.
- :mod:`~milco_os.evaluation.runfiles`, :mod:`~milco_os.evaluation.tables`,
  :mod:`~milco_os.evaluation.plots`: TREC runs and JSON summaries, text and
  Markdown tables, PNG plots.

>>> import tempfile
>>> from milco_os.engines.local import LocalEngine
>>> from milco_os.vectors.sparse import SparseVector, SparseView
>>> from milco_os.evaluation.datasets import Query
>>> engine = LocalEngine(tempfile.mkdtemp())
>>> engine.create_index("news", meta={"model": "m", "views": ["pivot"], "pruning": "none"})
>>> _ = engine.bulk_index("news", [("d1#0", {"doc_id": "d1", "passage": 0,
...                                          "pivot": {"dog": 2.0}})])
>>> class Encoder:  # stands in for milco_os.encoders.SparseEncoder
...     def encode(self, texts, kind="query"):
...         return [SparseVector(SparseView.from_pairs([(1, "dog", 0.5)])) for _ in texts]
>>> result = evaluate(Searcher(engine, "news", Encoder()), [Query("q1", "狗", "zh")],
...                   {"q1": {"d1": 1}}, metrics=["nDCG@10"])
>>> result.average, result.run
({'nDCG@10': 1.0}, {'q1': {'d1': 1.0}})
"""

from milco_os.evaluation.bm25 import BM25_FIELDS, BM25Searcher
from milco_os.evaluation.cache import CachingEncoder
from milco_os.evaluation.exact import exact_run, exact_scores
from milco_os.evaluation.plots import plot_sweep
from milco_os.evaluation.retrieval import Retrieval, Retriever, Run, best_per_document, retrieve
from milco_os.evaluation.runfiles import read_trec_run, save_evaluation, write_trec_run
from milco_os.evaluation.scoring import (
    DEFAULT_METRICS,
    Evaluation,
    evaluate,
    parse_metrics,
    score_retrieval,
)
from milco_os.evaluation.sweep import (
    MODE_CHOICES,
    VIEW_CHOICES,
    BuildOptions,
    Sweep,
    SweepError,
    SweepResult,
    System,
    compare_runs,
    index_for,
    sweep_systems,
    sweep_table,
    write_sweep,
)
from milco_os.evaluation.tables import compare, format_table, language_table, markdown_table
from milco_os.pipeline.search import Searcher

__all__ = [
    "BM25_FIELDS", "DEFAULT_METRICS", "MODE_CHOICES", "VIEW_CHOICES", "BM25Searcher",
    "BuildOptions", "CachingEncoder", "Evaluation", "Retrieval", "Retriever", "Run",
    "Searcher", "Sweep", "SweepError", "SweepResult", "System", "best_per_document",
    "compare", "compare_runs", "evaluate", "exact_run", "exact_scores", "format_table",
    "index_for", "language_table", "markdown_table", "parse_metrics", "plot_sweep",
    "read_trec_run", "retrieve", "save_evaluation", "score_retrieval", "sweep_systems",
    "sweep_table", "write_sweep", "write_trec_run",
]
