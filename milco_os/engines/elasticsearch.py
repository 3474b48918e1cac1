"""Elasticsearch through the ``elasticsearch`` client: ``sparse_vector`` fields and queries.

Supported: 8.11-8.19 and 9.x (tested: 8.11.3, 8.19.21, 9.2.4). What differs by version:

- ``index_options: {prune: false}`` on the fields where index-time pruning exists
  (8.19, 9.1+), so that every stored token is scored; 8.11-8.18 and 9.0 have none.
- 9.x: the ``sparse_vector`` query (one clause per view, pruning off). 8.x: a
  ``term`` clause per token with ``boost`` = its weight (the same linear score,
  and no ML plugin needed), within 1,024 clauses.
- 9.x leaves vectors out of ``_source`` unless asked (``_source_exclude_vectors``).

Requests go through the client's transport with plain JSON, which 8.x and 9.x
servers both accept (the 9.x client's compatibility headers are refused by 8.x).
Language analyzers exist only where the ``analysis-common`` module is installed
(not in the ``integ-test-zip`` distribution): otherwise ``text`` is indexed with
``standard`` and :class:`~milco_os.engines.base.MissingAnalyzersWarning` says so.

>>> from milco_os.engines.connection import ConnectionSettings
>>> settings = ConnectionSettings(url="http://127.0.0.1:9200", engine="elasticsearch")
>>> ElasticsearchEngine(settings).name
'elasticsearch'
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

from elastic_transport import ConnectionError as ESConnectionError
from elastic_transport import ConnectionTimeout

from milco_os.core.errors import EngineError, TransientEngineError
from milco_os.engines.cluster import ClusterEngine, classify_error

TERM_QUERY_CLAUSES = 1024  # 8.x sizes its limit from the heap, never below 1024


class ElasticsearchEngine(ClusterEngine):
    """MILCO indexes on an Elasticsearch 8.11+ or 9.x cluster."""

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
            if not isinstance(body, str | bytes):
                body = json.dumps(body, ensure_ascii=False)
        target = path + ("?" + urlencode(params) if params else "")
        try:
            # The transport has its own 10 s default: the settings' timeout must be passed.
            response = self.client.transport.perform_request(
                method, target, headers=headers, request_timeout=self.settings.timeout,
                body=body.encode() if isinstance(body, str) else body)
        except (ESConnectionError, ConnectionTimeout) as exc:
            raise TransientEngineError(f"{method} {path}: {exc}") from exc
        answer = response.body
        if isinstance(answer, bytes):
            answer = json.loads(answer) if answer else {}
        if not 200 <= response.meta.status < 300:
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise classify_error(method, path, response.meta.status, error)
        return answer

    @cached_property
    def server_version(self) -> tuple[int, int, int]:
        """The cluster's version (``GET /``; the nodes' info where ``/`` is refused, as in
        the ``integ-test-zip`` distribution)."""
        try:
            number = self.request("GET", "/")["version"]["number"]
        except EngineError as exc:
            if isinstance(exc, TransientEngineError):
                raise
            nodes = self.request("GET", "/_nodes/_local", params={"filter_path": "nodes.*.version"})
            number = next(iter(nodes["nodes"].values()))["version"]
        major, minor, patch = (int(re.match(r"\d+", x).group()) for x in
                               number.split(".")[:3])
        return major, minor, patch

    @property
    def query_flavour(self) -> str:
        return "elasticsearch" if self.server_version >= (9, 0, 0) else "elasticsearch-terms"

    @property
    def max_clause_count(self) -> int | None:  # type: ignore[override]
        """None with the ``sparse_vector`` query (one clause per view), else 1,024."""
        return None if self.query_flavour == "elasticsearch" else TERM_QUERY_CLAUSES

    def mapping_options(self) -> dict[str, Any]:
        version = self.server_version
        pruning_exists = version >= (9, 1, 0) or (8, 19, 0) <= version < (9, 0, 0)
        return {**super().mapping_options(), "prune_option": pruning_exists}

    def source_params(self) -> dict[str, str]:
        return {"_source_exclude_vectors": "false"} if self.server_version >= (9, 1, 0) else {}
