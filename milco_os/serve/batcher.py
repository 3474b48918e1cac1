"""Dynamic batching: the texts of concurrent requests are encoded in one model call.

Requests put their texts in one queue. While the model is busy, the queue
fills; when it is free, it takes up to ``max_batch`` texts at once (whole
requests, first come first served), waiting at most ``max_wait`` seconds after
the oldest text for more when fewer are queued. One thread runs the model, so
calls never compete for the cores; the event loop keeps reading requests.

The queue holds at most ``max_queue`` texts: a request that does not fit is
refused at once (HTTP 429) instead of waiting behind work it cannot outlast.
A request that waits longer than its timeout is answered 504 and its texts,
when still queued, are dropped unencoded.

>>> import asyncio
>>> def encode(texts, kind):  # stands in for SparseEncoder.encode
...     return [f"{kind}:{t}" for t in texts]
>>> sizes = []
>>> async def demo():
...     batcher = DynamicBatcher(encode, max_batch=8, max_wait=0.01, max_queue=16,
...                              on_batch=lambda n, seconds: sizes.append(n))
...     batcher.start()
...     answers = await asyncio.gather(batcher.submit(["a", "b"], "query", 1.0),
...                                    batcher.submit(["c"], "query", 1.0))
...     await batcher.close()
...     return answers, sizes
>>> asyncio.run(demo())
([['query:a', 'query:b'], ['query:c']], [3])
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from milco_os.serve.protocol import Unavailable

EncodeFn = Callable[[list[str], str], list[Any]]


@dataclass
class _Job:
    texts: list[str]
    kind: str
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # its request timed out: drop it if still queued


@dataclass
class BatchStats:
    """What the batcher did, for metrics and the shutdown report."""

    accepted_texts: int = 0
    encoded_texts: int = 0
    dropped_texts: int = 0  # abandoned before encoding
    rejected_texts: int = 0  # refused because the queue was full


class DynamicBatcher:
    """Collects texts from concurrent requests and encodes them in batches (see module doc)."""

    def __init__(self, encode: EncodeFn, *, max_batch: int, max_wait: float, max_queue: int,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_queue: Callable[[int], None] | None = None,
                 on_wait: Callable[[float], None] | None = None) -> None:
        self.encode = encode
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.on_batch = on_batch  # (texts in the batch, seconds the model took)
        self.on_queue = on_queue  # texts now queued
        self.on_wait = on_wait  # seconds one request waited before its model call
        self.stats = BatchStats()
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="milco-encode")

    @property
    def queued(self) -> int:
        """Texts waiting for the model."""
        return self._queued

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, texts: list[str], kind: str, timeout: float) -> list[Any]:
        """The encodings of ``texts``, once their batch has run.

        Raises :class:`Unavailable` (429) when the queue cannot take them, (503) when
        the batcher is closing, and (504) when ``timeout`` seconds pass first.
        """
        if self._closing:
            raise Unavailable("the server is shutting down", 503, "Unhealthy")
        if self._queued + len(texts) > self.max_queue:
            self.stats.rejected_texts += len(texts)
            raise Unavailable(f"overloaded: {self._queued} texts are queued (at most "
                              f"{self.max_queue}); retry later", 429, "Overloaded")
        job = _Job(texts, kind, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._set_queued(self._queued + len(texts))
        self.stats.accepted_texts += len(texts)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            job.abandoned = True
            raise Unavailable(f"timed out after {timeout:g} s waiting for the model", 504,
                              "Backend") from None

    async def close(self) -> None:
        """Encode what is queued, then stop (new submissions are refused)."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def _set_queued(self, n: int) -> None:
        self._queued = n
        if self.on_queue:
            self.on_queue(n)

    async def _run(self) -> None:
        while self._jobs or not self._closing:
            if not self._jobs:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            delay = self._jobs[0].queued_at + self.max_wait - time.monotonic()
            if self._queued < self.max_batch and delay > 0 and not self._closing:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                continue
            await self._encode(self._take())

    def _take(self) -> list[_Job]:
        """Whole jobs, oldest first, up to ``max_batch`` texts (the first one always)."""
        taken: list[_Job] = []
        size = 0
        while self._jobs and (not taken or size + len(self._jobs[0].texts) <= self.max_batch):
            job = self._jobs.popleft()
            self._set_queued(self._queued - len(job.texts))
            if job.abandoned:
                self.stats.dropped_texts += len(job.texts)
                continue
            taken.append(job)
            size += len(job.texts)
        return taken

    async def _encode(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        for kind in dict.fromkeys(job.kind for job in jobs):  # one model call per kind
            group = [job for job in jobs if job.kind == kind]
            texts = [text for job in group for text in job.texts]
            started = time.monotonic()
            if self.on_wait:
                for job in group:
                    self.on_wait(started - job.queued_at)
            try:
                vectors = await loop.run_in_executor(self._executor, self.encode, texts, kind)
            except Exception as exc:  # a model failure fails the requests, not the server
                for job in group:
                    if not job.future.done() and not job.abandoned:
                        job.future.set_exception(exc)
                continue
            self._record(len(texts), time.monotonic() - started)
            start = 0
            for job in group:
                if not job.future.done():
                    job.future.set_result(vectors[start : start + len(job.texts)])
                start += len(job.texts)

    def _record(self, size: int, seconds: float) -> None:
        self.stats.encoded_texts += size
        if self.on_batch:
            self.on_batch(size, seconds)
