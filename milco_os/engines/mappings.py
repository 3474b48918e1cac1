"""Index definitions (mappings and settings) for MILCO indexes.

The readable, canonical copies are ``mappings/opensearch.json`` and
``mappings/elasticsearch.json`` at the top of the repository, for users who
create indexes by hand. An installed package has no repository around it, so
the same mappings are built here in Python; ``tests/test_query.py`` keeps the
two in agreement (the JSON files are the documentation, this module is what
runs).

Fields: ``pivot``/``echo`` hold the two sparse views (``rank_features`` on
OpenSearch; ``sparse_vector`` with ``index_options.prune: false`` on
Elasticsearch >= 8.19, so that search scores every stored token); ``title`` and
``text`` are BM25 text, ``text`` with language-aware sub-fields (``text.en``,
``text.cjk``, ...); ``lang``/``doc_id`` are keywords and ``passage`` the passage
number within its document; ``extra`` stores (without indexing) any other
metadata of the corpus. Unknown fields are rejected (``dynamic: strict``), so a
misspelt field fails loudly instead of going unsearched. ``_meta`` records the
model, views, pruning and the milco-os version that built the index.

>>> body = index_body("opensearch", meta={"model": "m", "views": ["pivot"], "pruning": "none"})
>>> body["mappings"]["properties"]["pivot"]
{'type': 'rank_features'}
>>> body["mappings"]["_meta"]["views"]
['pivot']
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any

from milco_os import __version__
from milco_os.vectors.sparse import VIEWS

# Sub-field name -> built-in analyzer (both engines' `analysis-common` module).
TEXT_ANALYZERS = {
    "en": "english",
    "cjk": "cjk",
    "ar": "arabic",
    "hi": "hindi",
    "ru": "russian",
    "th": "thai",
    "de": "german",
    "es": "spanish",
}
META_KEYS = ("model", "views", "pruning", "milco_os_version")

_SPARSE_FIELD = {
    "opensearch": {"type": "rank_features"},
    "elasticsearch": {"type": "sparse_vector", "index_options": {"prune": False}},
}


def _text_field(analyzers: Collection[str] | None = None) -> dict[str, Any]:
    """``text`` with one sub-field per language analyzer in ``analyzers`` (None: all)."""
    subfields = {name: {"type": "text", "analyzer": a} for name, a in TEXT_ANALYZERS.items()
                 if analyzers is None or a in analyzers}
    return {"type": "text", "fields": subfields} if subfields else {"type": "text"}


def mapping_template(engine: str, analyzers: Collection[str] | None = None,
                     prune_option: bool = True) -> dict[str, Any]:
    """The mappings of ``engine`` with an empty ``_meta`` (what the JSON files hold).

    ``analyzers``: the language analyzers the cluster has (None: all of them);
    ``prune_option=False`` leaves out ``index_options``, which Elasticsearch before
    8.19 (and 9.0) does not know, and where no index-time pruning exists to turn off.
    """
    if engine not in _SPARSE_FIELD:
        raise ValueError(f"unknown engine {engine!r}; expected one of {tuple(_SPARSE_FIELD)}")
    sparse = copy.deepcopy(_SPARSE_FIELD[engine])
    if not prune_option:
        sparse.pop("index_options", None)
    properties = {view: copy.deepcopy(sparse) for view in VIEWS}
    properties.update(
        {
            "doc_id": {"type": "keyword"},
            "passage": {"type": "integer"},
            "lang": {"type": "keyword"},
            "title": {"type": "text"},
            "text": _text_field(analyzers),
            "extra": {"type": "object", "enabled": False},
        }
    )
    return {
        "mappings": {
            "dynamic": "strict",
            "_meta": {key: None for key in META_KEYS},
            "properties": properties,
        }
    }


def complete_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` checked for the required keys, with the milco-os version filled in."""
    missing = [key for key in ("model", "views", "pruning") if key not in meta]
    if missing:
        raise ValueError(f"index _meta lacks {missing}; it needs model, views and pruning")
    unknown = [view for view in meta["views"] if view not in VIEWS]
    if unknown:
        raise ValueError(f"index _meta names unknown views {unknown}; expected some of {VIEWS}")
    return {**meta, "milco_os_version": meta.get("milco_os_version") or __version__}


def index_body(
    engine: str,
    *,
    meta: dict[str, Any],
    shards: int = 1,
    replicas: int = 0,
    refresh_interval: str | None = None,
    analyzers: Collection[str] | None = None,
    prune_option: bool = True,
) -> dict[str, Any]:
    """The full create-index request body: settings plus mappings with ``_meta``
    (``analyzers`` and ``prune_option`` as in :func:`mapping_template`)."""
    body = mapping_template(engine, analyzers, prune_option)
    body["mappings"]["_meta"] = complete_meta(meta)
    settings: dict[str, Any] = {"number_of_shards": shards, "number_of_replicas": replicas}
    if refresh_interval is not None:
        settings["refresh_interval"] = refresh_interval
    body["settings"] = {"index": settings}
    return body
