"""One error hierarchy for milco-os.

Every error milco-os raises on purpose is a :class:`MilcoOSError`. Its kind says
whose fault it is and which exit status the command line uses for it; the CLI
turns any of them into one line on stderr, never a traceback.

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
