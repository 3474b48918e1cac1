"""What one server process is told: the model, the batching and the limits, the token.

The bearer token is read from ``MILCO_OS_SERVE_TOKEN``, or from a file
(``--token-file`` / ``MILCO_OS_SERVE_TOKEN_FILE``), never from the command line,
and it never appears in ``repr`` or logs.

>>> "hunter2" in repr(ServeConfig(model="m", token="hunter2"))
False
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from milco_os.core.errors import InputError
from milco_os.vectors.pruning import Pruning

TOKEN_ENV, TOKEN_FILE_ENV = "MILCO_OS_SERVE_TOKEN", "MILCO_OS_SERVE_TOKEN_FILE"


@dataclass(frozen=True)
class ServeConfig:
    """One process: one model, one batcher, the request limits and the search targets.

    ``max_batch`` texts are encoded together at most; a batch waits at most
    ``max_wait_ms`` after its first text for more. ``max_queue`` texts may wait
    for the model before requests are answered 429. ``indexes``: the indexes
    ``/search`` may query (the first is the default); empty: no ``/search``.
    """

    model: str
    device: str | None = None
    backend: str = "auto"  # what runs the model (milco_os.encoders.load_encoder)
    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 256
    max_texts: int = 32
    max_chars: int = 8192
    timeout_s: float = 30.0
    prune: Pruning = field(default_factory=Pruning)  # the default of /encode answers
    threads: int | None = None  # torch threads per encode call [default: milco_os.core.threads]
    indexes: tuple[str, ...] = ()
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.prune, str):  # the Python API may give the spec string
            try:
                object.__setattr__(self, "prune", Pruning.parse(self.prune))
            except ValueError as exc:
                raise InputError(f"prune: {exc}") from None
        for name in ("max_batch", "max_queue", "max_texts", "max_chars"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise InputError("max_wait_ms must be >= 0 and timeout_s > 0")
        if self.max_texts > self.max_queue:
            raise InputError(f"max_texts ({self.max_texts}) must not exceed max_queue "
                             f"({self.max_queue}): such a request could never be queued")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read: the largest allowed texts in UTF-8, JSON-escaped."""
        return self.max_texts * (self.max_chars * 6 + 16) + 64 * 1024


def read_token(token_file: str | None = None) -> str | None:
    """The bearer token: ``token_file``, else ``$MILCO_OS_SERVE_TOKEN_FILE``, else
    ``$MILCO_OS_SERVE_TOKEN``; None when none is set (the server is then open)."""
    path = token_file or os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            token = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"cannot read the token file {path}: {exc.strerror}") from None
        if not token:
            raise InputError(f"the token file {path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None
