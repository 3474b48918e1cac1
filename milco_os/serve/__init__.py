"""``milco-os serve``: MILCO query-time encoding as an HTTP service.

One process holds one loaded model and a :class:`~milco_os.serve.batcher.DynamicBatcher`
that encodes the texts of concurrent requests together. Endpoints:
``POST /encode``, ``POST /embed_sparse`` (text-embeddings-inference's shape),
``POST /dsl``, ``POST /search``, ``GET /health`` and ``GET /metrics``
(:mod:`milco_os.serve.app`). Built on Starlette and uvicorn.
"""

from milco_os.serve.app import create_app
from milco_os.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
