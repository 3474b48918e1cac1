"""One error hierarchy for milco-os.

Every error milco-os raises on purpose is a :class:`MilcoOSError`. Its kind says
whose fault it is and which exit status the command line uses for it; the CLI
turns any of them into one line on stderr, never a traceback.

==  ==========================================================================
0   success
1   the engine refused the request (unknown index, unsupported mode), or an
    ingest finished with failed records or read no record at all
2   bad input (option, spec value, file, record stream, model, incompatible
    index), or an ingest that stopped early (its JSON report is printed)
3   a cluster that cannot be reached or stays overloaded (after the retries)
70  an internal error (a bug): one line, ``MILCO_OS_DEBUG=1`` shows the traceback
==  ==========================================================================

>>> try:
...     raise InputError("queries.tsv line 3: no tab between id and text")
... except MilcoOSError as exc:
...     print(exc.exit_code, exc)
2 queries.tsv line 3: no tab between id and text
"""

from __future__ import annotations


class MilcoOSError(Exception):
    """Base of every error milco-os raises on purpose."""

    exit_code = 2


class InputError(MilcoOSError, ValueError):
    """Bad input from the user: an option, a spec value, a file or a record."""


class ModelLoadError(MilcoOSError, ValueError):
    """A model folder or name that cannot be loaded (missing, truncated, not MILCO)."""


class IncompatibleIndexError(MilcoOSError):
    """An index built with another model, views or pruning than the one in use."""


class ServiceError(MilcoOSError, RuntimeError):
    """A cluster or other service that cannot be reached or refuses the work."""

    exit_code = 3


class EngineError(ServiceError):
    """A request the engine refused; retrying it unchanged will not help.

    ``status`` is the HTTP status of the refusal, when there was one.
    """

    exit_code = 1

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientEngineError(EngineError):
    """The whole request failed (429, 5xx, timeout, connection): the caller retries."""

    exit_code = 3


class IndexNotFoundError(EngineError):
    """The index does not exist."""


class IndexExistsError(EngineError):
    """The index already exists (e.g. another worker created it a moment ago)."""


class InvalidIndexNameError(EngineError, InputError):
    """A name that is not exactly one concrete index."""

    exit_code = 2
