"""Search backends behind one interface (:class:`Engine`); :func:`open_engine` picks one.

- :mod:`~milco_os.engines.connection`: how a cluster is reached (URL, credentials, TLS);
- :mod:`~milco_os.engines.terms`: feature names and values an engine accepts;
- :mod:`~milco_os.engines.query`: the query DSL for sparse vectors;
- :mod:`~milco_os.engines.mappings`: index mappings and settings;
- :mod:`~milco_os.engines.base`, :mod:`~milco_os.engines.bulk`: the :class:`Engine`
  interface and bulk requests;
- :mod:`~milco_os.engines.opensearch`, :mod:`~milco_os.engines.elasticsearch` (over
  :mod:`~milco_os.engines.cluster`) and :mod:`~milco_os.engines.local` (exact, on disk,
  with :mod:`~milco_os.engines.local_bm25` for BM25 and :mod:`~milco_os.engines.approximate`).

>>> import tempfile
>>> open_engine(None, "local", local_path=tempfile.mkdtemp()).name
'local'
"""

from __future__ import annotations

from dataclasses import replace

from milco_os.core.errors import EngineError, IndexNotFoundError, TransientEngineError
from milco_os.engines.base import BulkFailure, Engine, Hit, MissingAnalyzersWarning
from milco_os.engines.connection import ENGINES, ConnectionSettings, NoClusterError

__all__ = [
    "ENGINES",
    "BulkFailure",
    "Engine",
    "EngineError",
    "Hit",
    "IndexNotFoundError",
    "MissingAnalyzersWarning",
    "TransientEngineError",
    "open_engine",
]


def open_engine(
    settings: ConnectionSettings | None,
    engine: str | None = None,
    local_path: str | None = None,
) -> Engine:
    """The engine to use.

    ``engine`` overrides ``settings.engine`` (default settings: from ``MILCO_OS_*``)
    and ``local_path`` overrides ``settings.local_path``. ``"local"`` (or a
    ``local_path`` argument with no engine named) opens the on-disk index under
    that folder (default ``~/.cache/milco-os/local``). Otherwise the configured
    cluster is used (see :meth:`ConnectionSettings.resolved`), and when none is
    configured or started and no engine was named here, the local engine is the
    fallback; a local cluster that was started but does not answer is an error, never
    a silent switch to the local engine.
    """
    if engine not in (None, *ENGINES):
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    settings = settings or ConnectionSettings.from_env()
    wants_local = engine == "local" or (
        engine is None and (local_path is not None or settings.engine == "local")
    )
    local_path = local_path or settings.local_path
    if wants_local:
        return _local(local_path)
    if engine is not None and engine != settings.engine:
        settings = replace(settings, engine=engine)
    try:
        settings = settings.resolved()
    except NoClusterError:  # a cluster that was started but does not answer is an error
        if engine is not None:
            raise
        return _local(local_path)
    if settings.engine == "elasticsearch":
        from milco_os.engines.elasticsearch import ElasticsearchEngine

        return ElasticsearchEngine(settings)
    from milco_os.engines.opensearch import OpenSearchEngine

    return OpenSearchEngine(settings)


def _local(local_path: str | None) -> Engine:
    from milco_os.engines.local import LocalEngine

    return LocalEngine(local_path)
