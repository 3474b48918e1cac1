"""An encoder that encodes each distinct text once, for sweeps that search the same
queries (and index the same corpus) with many systems."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from milco_os.pipeline.search import QueryEncoder
from milco_os.vectors.sparse import SparseVector

# options that change how a text is computed, not what it encodes to (padding within a
# batch moves the last float bits at most)
RESULT_NEUTRAL = {"batch_size", "progress", "threads"}


class CachingEncoder:
    """Wraps an encoder; ``encode`` reuses the vector of a text already encoded with the
    same kind and options. Other attributes (``tokenizer``...) are the wrapped encoder's."""

    def __init__(self, encoder: QueryEncoder) -> None:
        self.encoder = encoder
        self.cache: dict[tuple[Any, ...], SparseVector] = {}

    def encode(self, texts: Sequence[str], kind: str = "query", **options: Any
               ) -> list[SparseVector]:
        key = (kind, tuple(sorted((k, v) for k, v in options.items() if k not in RESULT_NEUTRAL)))
        todo = list(dict.fromkeys(t for t in texts if (key, t) not in self.cache))
        if todo:
            encoded = self.encoder.encode(todo, kind=kind, **options)
            self.cache.update({(key, t): v for t, v in zip(todo, encoded, strict=True)})
        return [self.cache[(key, t)] for t in texts]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)
