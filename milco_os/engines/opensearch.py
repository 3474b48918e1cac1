"""OpenSearch through ``opensearch-py``: ``rank_features`` fields, ``rank_feature``
queries (or ``neural_sparse`` when the neural-search plugin is installed).

>>> from milco_os.engines.connection import ConnectionSettings
>>> engine = OpenSearchEngine(ConnectionSettings(url="http://127.0.0.1:9200"))
>>> engine.name
'opensearch'
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import TransportError

from milco_os.core.errors import EngineError, TransientEngineError
from milco_os.engines.cluster import ClusterEngine, classify_error
from milco_os.engines.query import CLAUSE_SETTING, DEFAULT_MAX_CLAUSE_COUNT

NEURAL_SEARCH_PLUGIN = "opensearch-neural-search"


class OpenSearchEngine(ClusterEngine):
    """MILCO indexes on an OpenSearch cluster."""

    name = "opensearch"
    flavour = "opensearch"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        ndjson: bool = False,
    ) -> Any:
        headers = {"content-type": "application/x-ndjson"} if ndjson else None
        try:
            return self.client.transport.perform_request(
                method, path, params=params, body=body, headers=headers
            )
        except OSConnectionError as exc:  # includes timeouts
            raise TransientEngineError(f"{method} {path}: {exc.error}") from exc
        except TransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else 0
            error = exc.info.get("error") if isinstance(exc.info, dict) else exc.error
            raise classify_error(method, path, status, error) from exc

    @cached_property
    def max_clause_count(self) -> int | None:
        """``indices.query.bool.max_clause_count`` as the cluster applies it (the default,
        1024, when this user may not read cluster settings)."""
        try:
            answer = self.request("GET", "/_cluster/settings",
                                  params={"include_defaults": "true", "flat_settings": "true"})
        except EngineError as exc:
            if isinstance(exc, TransientEngineError):
                raise
            return DEFAULT_MAX_CLAUSE_COUNT
        for level in ("transient", "persistent", "defaults"):
            value = answer.get(level, {}).get(CLAUSE_SETTING)
            if value is not None:
                return int(value)
        return DEFAULT_MAX_CLAUSE_COUNT

    @cached_property
    def supports_neural_sparse(self) -> bool:
        """Whether the cluster runs the neural-search plugin (needed by ``neural_sparse``)."""
        plugins = self.request("GET", "/_cat/plugins", params={"format": "json"})
        return any(p.get("component") == NEURAL_SEARCH_PLUGIN for p in plugins)

