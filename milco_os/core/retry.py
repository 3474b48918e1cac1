"""The one retry policy: which failures are transient, and how long to wait between tries.

Whole requests (a refused connection, a timeout, HTTP 429/5xx) and single bulk
items (429 queue full, 5xx shard moving) are classified by :func:`is_transient`
and retried with exponential backoff and full jitter, at most ``attempts`` times.

>>> is_transient(429), is_transient(503), is_transient(400)
(True, True, False)
>>> RetryPolicy(attempts=1).retrying()(lambda: "once")
'once'
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from milco_os.core.errors import TransientEngineError


def is_transient(status: int) -> bool:
    """Whether a failed request may succeed when retried (too many requests, server errors)."""
    return status == 429 or status >= 500


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all (1: no retry), waiting up to ``max_wait`` seconds between."""

    attempts: int = 8
    max_wait: float = 30.0
    base: float = 0.5  # seconds before the first retry, doubled each time

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1 (1 means no retry), got {self.attempts}")

    def retrying(self) -> Retrying:
        """A tenacity ``Retrying`` that retries transient engine errors under this policy."""
        return Retrying(retry=retry_if_exception_type(TransientEngineError),
                        wait=wait_random_exponential(multiplier=self.base, max=self.max_wait),
                        stop=stop_after_attempt(self.attempts), reraise=True)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based), jittered."""
        return min(self.base * 2**attempt, self.max_wait) * random.uniform(0.5, 1.0)
