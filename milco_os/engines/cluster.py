"""What OpenSearch and Elasticsearch share: the REST calls behind :class:`Engine`.

Subclasses supply one primitive, :meth:`ClusterEngine.request`, which sends a
request through their own client and maps its errors onto
:class:`EngineError` / :class:`TransientEngineError` / :class:`IndexNotFoundError`,
plus the flavour of mapping and query they speak.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Sequence
from functools import cached_property
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from milco_os.core.errors import (
    EngineError,
    IndexExistsError,
    IndexNotFoundError,
    TransientEngineError,
)
from milco_os.core.retry import is_transient
from milco_os.engines.base import (
    TEXT_FIELDS,
    BulkDocument,
    BulkFailure,
    Engine,
    Hit,
    MissingAnalyzersWarning,
    check_index_name,
)
from milco_os.engines.connection import ConnectionSettings
from milco_os.engines.mappings import TEXT_ANALYZERS, index_body
from milco_os.engines.query import SparseQuery, bm25_body, build_search_body


def error_reason(error: Any) -> str:
    """``type: reason (caused by ...)`` from an engine error object."""
    if not isinstance(error, dict):
        return str(error)
    text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
    cause = error.get("caused_by") or _shard_cause(error)
    return f"{text} (caused by {error_reason(cause)})" if cause else text


def _shard_cause(error: dict[str, Any]) -> Any:
    """The first shard's own reason: "all shards failed" alone does not say why."""
    shards = error.get("failed_shards") or []
    return shards[0].get("reason") if shards and isinstance(shards[0], dict) else None


def classify_error(method: str, path: str, status: int, error: Any) -> EngineError:
    """The :class:`EngineError` subclass for a failed request, with a readable message."""
    reason = error_reason(error) if error else ""
    message = f"{method} {path}: HTTP {status}: {reason.strip() or _status_reason(status)}"
    error_type = error.get("type") if isinstance(error, dict) else None
    if status == 404 and error_type == "index_not_found_exception":
        return IndexNotFoundError(message, status)
    if status == 400 and error_type == "resource_already_exists_exception":
        return IndexExistsError(message, status)
    if is_transient(status):
        return TransientEngineError(message, status)
    return EngineError(message, status)


def _status_reason(status: int) -> str:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "no reason given"
    if status == 401:
        reason += " (check the user and the password or API key)"
    return reason


def _path(index: str, *parts: str) -> str:
    return "/" + "/".join([quote(check_index_name(index), safe=""), *parts])


class ClusterEngine(Engine):
    """An :class:`Engine` over a cluster's REST API."""

    flavour: str  # "opensearch" | "elasticsearch"

    @property
    def query_flavour(self) -> str:
        """The query dialect (:data:`milco_os.engines.query.FLAVOURS`) this cluster speaks."""
        return self.flavour

    def __init__(self, settings: ConnectionSettings, client: Any | None = None) -> None:
        self.settings = settings
        self._client = client

    @property
    def client(self) -> Any:
        """The engine's own client, opened on first use (``settings.client()``)."""
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    @abstractmethod
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        ndjson: bool = False,
    ) -> Any:
        """Send one request; return the decoded JSON answer."""

    @property
    def address(self) -> str:
        return self.settings.display_url or self.name

    @property
    def supports_neural_sparse(self) -> bool:
        """Whether the cluster runs OpenSearch's neural-search plugin."""
        return False

    def create_index(
        self,
        index: str,
        *,
        meta: dict[str, Any],
        shards: int = 1,
        replicas: int = 0,
        refresh_interval: str | None = None,
        exist_ok: bool = False,
    ) -> None:
        if exist_ok and self.index_exists(index):
            return
        body = index_body(self.flavour, meta=meta, shards=shards, replicas=replicas,
                          refresh_interval=refresh_interval, **self.mapping_options())
        try:
            self.request("PUT", _path(index), body)
        except IndexExistsError:  # created by a concurrent worker since the check above
            if not exist_ok:
                raise
        self._wait_for_primaries(index)

    def _wait_for_primaries(self, index: str) -> None:
        """Return once the master reports the new index yellow: on a busy multi-node cluster
        the PUT can answer before every node knows the index, and the next request, sent to
        another node, would find no such index. A wait that times out (408), or that this
        user may not ask for (403), is not an error: what follows retries on its own."""
        try:
            # in the path: opensearch-py would take a ``timeout`` parameter for its own
            self.request("GET", f"/_cluster/health{_path(index)}?wait_for_status=yellow"
                                f"&timeout={int(self.settings.timeout)}s")
        except EngineError as exc:
            if exc.status not in (403, 408):
                raise

    def mapping_options(self) -> dict[str, Any]:
        """What the index mapping may use on this cluster (see :func:`index_body`)."""
        if self.has_language_analyzers:
            return {}
        warnings.warn(MissingAnalyzersWarning(
            "this cluster has no analysis-common module (no language analyzers): the "
            f"text.{{{','.join(TEXT_ANALYZERS)}}} sub-fields are left out and BM25 (hybrid "
            "search) matches text with the standard analyzer only"), stacklevel=3)
        return {"analyzers": ()}

    @cached_property
    def has_language_analyzers(self) -> bool:
        """Whether every node has the ``analysis-common`` module (assumed, when this user may
        not list the nodes' modules: full distributions ship it)."""
        try:
            nodes = self.request("GET", "/_nodes/plugins")["nodes"].values()
        except EngineError as exc:
            if isinstance(exc, TransientEngineError):
                raise
            return True
        return all(any(m.get("name") == "analysis-common"
                       for m in [*node.get("modules", []), *node.get("plugins", [])])
                   for node in nodes)

    def set_refresh_interval(self, index: str, interval: str | None) -> None:
        self.request("PUT", _path(index, "_settings"), {"index": {"refresh_interval": interval}})

    def update_meta(self, index: str, changes: dict[str, Any]) -> None:
        # PUT _mapping replaces the whole _meta: send it merged
        self.request("PUT", _path(index, "_mapping"), {"_meta": {**self.meta(index), **changes}})

    def delete_index(self, index: str, *, missing_ok: bool = True) -> None:
        try:
            self.request("DELETE", _path(index))
        except IndexNotFoundError:
            if not missing_ok:
                raise

    def index_exists(self, index: str) -> bool:
        try:
            self.request("GET", _path(index, "_mapping"))
        except IndexNotFoundError:
            return False
        return True

    def index_info(self, index: str) -> dict[str, Any]:
        mapping = next(iter(self.request("GET", _path(index, "_mapping")).values()))
        settings = next(iter(self.request("GET", _path(index, "_settings")).values()))
        stats = self.request("GET", _path(index, "_stats", "docs,store"))["_all"]["primaries"]
        index_settings = settings["settings"]["index"]
        return {
            "index": index,
            "meta": mapping["mappings"].get("_meta", {}),
            # a just-created index has no started primaries yet: its stats are empty
            "docs": stats.get("docs", {}).get("count", 0),
            "store_bytes": self._primary_segment_bytes(
                index, stats.get("store", {}).get("size_in_bytes", 0)),
            "settings": {
                "shards": int(index_settings["number_of_shards"]),
                "replicas": int(index_settings["number_of_replicas"]),
                "refresh_interval": index_settings.get("refresh_interval"),
            },
        }

    def _primary_segment_bytes(self, index: str, cached: int) -> int:
        """Bytes of the primaries' segments, read now: the store size in ``_stats`` is cached
        for ``index.store.stats_refresh_interval`` (10 s), so right after an ingest it can
        still say the index is empty. ``cached`` when the segments cannot be listed."""
        try:
            segments = self.request("GET", f"/_cat/segments{_path(index)}",
                                    params={"format": "json", "bytes": "b", "h": "prirep,size"})
        except EngineError as exc:
            if isinstance(exc, TransientEngineError):
                raise
            return cached
        return sum(int(s["size"]) for s in segments if s.get("prirep") in ("p", "primary"))

    def bulk_index(
        self, index: str, docs: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[BulkFailure]:
        documents, failures = [], []
        for doc_id, source in docs:
            try:  # NaN/inf are not JSON: refuse that document alone, as the engine would
                documents.append(BulkDocument.of(index, doc_id, source))
            except ValueError as exc:
                failures.append(BulkFailure(
                    doc_id, 400, f"mapper_parsing_exception: a value is NaN or infinite ({exc})"))
        return failures + (self.bulk_send(index, documents) if documents else [])

    def bulk_send(self, index: str, documents: Sequence[BulkDocument]) -> list[BulkFailure]:
        check_index_name(index)
        # The clients send a str as its UTF-8 bytes: exactly the bytes each document counted.
        body = b"".join(d.lines for d in documents).decode("utf-8")
        answer = self.request("POST", "/_bulk", body, ndjson=True)
        failures: list[BulkFailure] = []
        if not answer.get("errors"):
            return failures
        for item in answer["items"]:
            result = next(iter(item.values()))
            if result.get("status", 200) >= 300:
                failures.append(
                    BulkFailure(result["_id"], result["status"], error_reason(result.get("error")))
                )
        return failures

    def _mget(self, index: str, ids: Sequence[str], source: bool) -> list[dict[str, Any]]:
        if not ids:
            return []
        params = {"_source": "true" if source else "false"}
        if source:
            params.update(self.source_params())
        answer = self.request("POST", _path(index, "_mget"), {"ids": list(ids)}, params=params)
        return [doc for doc in answer["docs"] if doc.get("found")]

    def existing_ids(self, index: str, ids: Sequence[str]) -> set[str]:
        return {doc["_id"] for doc in self._mget(index, ids, source=False)}

    def get_sources(self, index: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {doc["_id"]: doc["_source"] for doc in self._mget(index, ids, source=True)}

    def source_params(self) -> dict[str, str]:
        """Extra parameters that make a get return the whole stored ``_source``."""
        return {}

    def refresh(self, index: str) -> None:
        self.request("POST", _path(index, "_refresh"))

    def count(self, index: str) -> int:
        return int(self.request("GET", _path(index, "_count"))["count"])

    def health(self) -> str:
        return str(self.request("GET", "/_cluster/health")["status"])

    def search_body(self, query: SparseQuery, k: int = 10) -> dict[str, Any]:
        """The request body :meth:`search` sends (clause limit read from the cluster)."""
        if query.mode == "neural-sparse" and not self.supports_neural_sparse:
            raise EngineError(
                "mode 'neural-sparse' needs OpenSearch's neural-search plugin, which this "
                "cluster lacks; the default mode computes the same scores without it"
            )
        return build_search_body(query, k, flavour=self.query_flavour,
                                 max_clause_count=self.max_clause_count)

    def search(self, index: str, query: SparseQuery, k: int = 10) -> list[Hit]:
        return self.raw_search(index, self.search_body(query, k))

    def bm25_search(self, index: str, text: str, k: int = 10,
                    fields: Sequence[str] = TEXT_FIELDS, collapse: bool = False) -> list[Hit]:
        return self.raw_search(index, bm25_body(text, k, fields, collapse))

    def sample_sources(self, index: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
        body = {"size": n, "query": {"function_score": {
            "query": {"match_all": {}}, "random_score": {"seed": seed, "field": "_seq_no"}}}}
        return [hit.source for hit in self.raw_search(index, body)]

    def raw_search(self, index: str, body: dict[str, Any]) -> list[Hit]:
        """Run any ``_search`` body; hits as :class:`Hit`."""
        answer = self.request("POST", _path(index, "_search"), body)
        return [
            Hit(hit["_id"], float(hit["_score"]), hit.get("_source", {}))
            for hit in answer["hits"]["hits"]
        ]
