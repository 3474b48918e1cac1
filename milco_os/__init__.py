"""milco-os: multilingual learned sparse retrieval (MILCO) inside OpenSearch and Elasticsearch.

Text flows one way, one package per stage:

    text -> tokens -> model -> sparse vectors -> pruning -> engine documents / queries
    text    encoders  models    vectors           vectors    pipeline, engines

``core`` (errors, threads, retry) sits under them all, ``index`` (ingest specs,
compatibility) beside ``engines``; ``evaluation``, ``serve``, ``training``,
``devcluster`` and ``cli`` on top. A package imports only the layers below it.

The main entry points are importable from here (lazily: ``import milco_os``
does not import torch):

>>> from milco_os import SparseVector, SparseView
>>> SparseVector(SparseView.from_pairs([(2001, "dog", 1.5)])).to_dict()
{'pivot': {'dog': 1.5}, 'echo': {}}
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from milco_os.vectors.sparse import SparseVector, SparseView

__version__ = "0.1.0"

_LAZY = {
    "SparseEncoder": "milco_os.encoders",
    "OnnxSparseEncoder": "milco_os.encoders",
    "load_encoder": "milco_os.encoders",
    "Pruning": "milco_os.vectors.pruning",
    "MilcoConfig": "milco_os.models.milco",
    "MilcoModel": "milco_os.models.milco",
    "MilcoOutput": "milco_os.models.base",
    "SpladeModel": "milco_os.models.splade",
    "load_sparse_model": "milco_os.models.registry",
    "init_model": "milco_os.models.presets",
    "open_engine": "milco_os.engines",
    "Searcher": "milco_os.pipeline.search",
    "SearchOptions": "milco_os.pipeline.search",
    "SparseQuery": "milco_os.engines.query",
    "Ingestor": "milco_os.pipeline.ingest",
    "IngestSpec": "milco_os.index.spec",
    "ConnectionSettings": "milco_os.engines.connection",
}

__all__ = ["SparseVector", "SparseView", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'milco_os' has no attribute {name!r}")
