"""Elasticsearch through the ``elasticsearch`` client: ``sparse_vector`` fields
(pruning off) and ``sparse_vector`` queries.

Elasticsearch sizes its clause limit itself (8.x+), so queries are not cut
unless :attr:`milco_os.query.SparseQuery.max_clauses` asks for it. The
``elasticsearch`` client only talks to servers that identify as Elasticsearch;
use :class:`milco_os.engines.opensearch.OpenSearchEngine` for OpenSearch.

>>> from milco_os.connection import ConnectionSettings
>>> settings = ConnectionSettings(url="http://127.0.0.1:9200", engine="elasticsearch")
>>> ElasticsearchEngine(settings).name
'elasticsearch'
"""

from __future__ import annotations

from typing import Any

from elastic_transport import ConnectionError as ESConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError

from milco_os.engines.base import TransientEngineError
from milco_os.engines.cluster import ClusterEngine, classify_error


class ElasticsearchEngine(ClusterEngine):
    """MILCO indexes on an Elasticsearch (>= 8.19 / 9.1) cluster."""

    name = "elasticsearch"
    flavour = "elasticsearch"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        ndjson: bool = False,
    ) -> Any:
        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = "application/x-ndjson" if ndjson else "application/json"
        try:
            return self.client.perform_request(
                method, path, params=params, headers=headers, body=body
            ).body
        except (ESConnectionError, ConnectionTimeout) as exc:
            raise TransientEngineError(f"{method} {path}: {exc}") from exc
        except ApiError as exc:
            error = exc.body.get("error") if isinstance(exc.body, dict) else exc.body
            raise classify_error(method, path, exc.meta.status, error) from exc

