"""How many CPU threads torch uses while encoding: few for one query, all for batches.

One short query is a chain of small matrix products: splitting each over two
threads saves little, and when another process holds a core (a search node
indexing, a second worker) every product waits for the slowest thread, which
made one query 20x slower on a 2-core machine. So a call encoding at most
:data:`LATENCY_MAX_TEXTS` texts runs on the *query* thread count (default 1),
and larger calls, where throughput matters, on the *batch* count (default: the
cores this process may use).

Settable, most specific first: the ``threads`` argument of
:meth:`SparseEncoder.encode`, :func:`configure` (what the CLI's ``--threads``
calls), the environment (``MILCO_OS_THREADS`` for queries,
``MILCO_OS_BATCH_THREADS`` for batches), then the defaults.

>>> configure(query=2)
>>> threads_for(1), threads_for(1, explicit=3)
(2, 3)
>>> configure(query=None)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from milco_os.core.errors import InputError

QUERY_ENV, BATCH_ENV = "MILCO_OS_THREADS", "MILCO_OS_BATCH_THREADS"
LATENCY_MAX_TEXTS = 4  # calls this small are interactive: latency over throughput
DEFAULT_QUERY_THREADS = 1

_configured: dict[str, int | None] = {"query": None, "batch": None}


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _checked(value: int | None, name: str) -> int | None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise InputError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def configure(query: int | None = None, batch: int | None = None) -> None:
    """Set the query and batch thread counts for this process (None: back to the default)."""
    _configured["query"] = _checked(query, "query threads")
    _configured["batch"] = _checked(batch, "batch threads")


def _from_env(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return _checked(int(raw), name)
    except ValueError:
        raise InputError(f"{name} must be a whole number >= 1, got {raw!r}") from None


def query_threads() -> int:
    return _configured["query"] or _from_env(QUERY_ENV) or DEFAULT_QUERY_THREADS


def batch_threads() -> int:
    return _configured["batch"] or _from_env(BATCH_ENV) or usable_cores()


def threads_for(n_texts: int, explicit: int | None = None) -> int:
    """The thread count for one encode call of ``n_texts`` texts."""
    if _checked(explicit, "threads") is not None:
        return explicit
    return query_threads() if n_texts <= LATENCY_MAX_TEXTS else batch_threads()


@contextlib.contextmanager
def torch_threads(wanted: int) -> Iterator[int]:
    """Run the block with torch on ``wanted`` threads, then restore the count.

    ``torch.set_num_threads`` is only called when the count changes, since a change
    rebuilds the thread pool.
    """
    import torch

    before = torch.get_num_threads()
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
