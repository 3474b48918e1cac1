"""Text to sparse vectors, whatever runs the model: tokens in, the two views out.

:class:`TextEncoder` does everything but the forward pass: it checks and tokenizes
texts, batches them by length, and turns the model's dense outputs (pivot weights per
English piece, echo weights per input position) into :class:`~milco_os.vectors.sparse.SparseVector`.
A backend (:mod:`~milco_os.encoders.pytorch`, :mod:`~milco_os.encoders.onnx`) supplies
:meth:`TextEncoder.forward`. This module imports no torch, so a backend that needs none
starts fast.
"""

from __future__ import annotations

import contextlib
import functools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from milco_os.core.threads import threads_for
from milco_os.text.corpus import unicode_problem
from milco_os.vectors.sparse import SparseVector, SparseView

KINDS = ("query", "document")
DEFAULT_MAX_LENGTH = {"query": 64, "document": 512}


class Vocabulary:
    """Term strings by id, and the ids of special tokens, read from a tokenizer.

    Strings are looked up per id as vectors need them (a 250,002-piece vocabulary read
    whole costs half a second of every start-up); :attr:`terms` is the whole array.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.special_ids = frozenset(
            i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special)
        self._strings: dict[int, str] = {}

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocabulary:
        return cls(tokenizer)

    @functools.cached_property
    def terms(self) -> np.ndarray:
        """Every term string, by id (ids the tokenizer does not use are ``""``)."""
        terms = np.full(len(self), "", dtype=object)
        for term, i in self.tokenizer.get_vocab(with_added_tokens=True).items():
            terms[i] = term
        return terms

    def strings(self, ids: np.ndarray) -> tuple[str, ...]:
        """The term strings of ``ids``."""
        strings, lookup = self._strings, self.tokenizer.id_to_token
        for i in ids.tolist():
            if i not in strings:
                strings[i] = lookup(i) or ""
        return tuple(strings[i] for i in ids.tolist())

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


class TextEncoder(ABC):
    """Encode texts into :class:`SparseVector`; subclasses run the model (:meth:`forward`).

    ``max_positions``: the longest input the model takes; ``echo_ignored_ids``: input
    pieces whose positions echo nothing (a milco-os-trained model's config: special
    tokens, bare "▁", punctuation; released checkpoints have none).
    """

    backend: str  # "torch" | "onnx" | "onnx-int8"

    def __init__(self, tokenizer, pivot_vocab: Vocabulary, echo_vocab: Vocabulary,
                 max_positions: int, echo_ignored_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.pivot_vocab = pivot_vocab
        self.echo_vocab = echo_vocab
        self.pad_id = pad_id(tokenizer)
        self.max_positions = max_positions
        self.echo_ignored = np.asarray(sorted(echo_ignored_ids), dtype=np.int64)

    @abstractmethod
    def forward(self, input_ids: np.ndarray, mask: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(pivot [B, V] = log1p(relu(max-pooled logits)), echo [B, L] or None)`` for one
        padded batch (int64 ids and 0/1 mask)."""

    def running_on(self, threads: int) -> contextlib.AbstractContextManager:
        """A context in which :meth:`forward` uses ``threads`` CPU threads."""
        return contextlib.nullcontext()

    def encode(self, texts: Sequence[str], kind: str = "query", batch_size: int = 32,
               max_length: int | None = None, keep_special_tokens: bool = True,
               progress: bool = False, threads: int | None = None) -> list[SparseVector]:
        """One :class:`SparseVector` per text, in input order.

        Texts are sorted by length and padded per batch; ``max_length`` defaults to 64
        tokens for queries and 512 for documents (capped by the model's positions).
        ``keep_special_tokens=False`` drops special tokens (``<s>``, ``</s>``, ``[CLS]``...)
        from both views; by default they are kept, as the model was trained with them.
        ``threads``: CPU threads for this call [default: :mod:`milco_os.core.threads`' policy,
        few for a query, all cores for a batch].
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
            if problem := unicode_problem(text):
                raise ValueError(f"texts[{i}]: {problem}")
        length = min(max_length or DEFAULT_MAX_LENGTH[kind], self.max_positions)
        token_ids = self.tokenize(list(texts), length)
        results: list[SparseVector | None] = [None] * len(token_ids)
        with self.running_on(threads_for(len(token_ids), threads)):
            for batch in self._batches(token_ids, batch_size, progress):
                rows = [token_ids[i] for i in batch]
                pivot, echo = self.forward(*padded(rows, self.pad_id))
                for row, (index, ids) in enumerate(zip(batch, rows, strict=True)):
                    results[index] = self.to_vector(ids, pivot[row],
                                                    None if echo is None else echo[row],
                                                    keep_special_tokens)
        return results  # type: ignore[return-value]

    def encode_query(self, texts: Sequence[str], **options) -> list[SparseVector]:
        return self.encode(texts, kind="query", **options)

    def encode_document(self, texts: Sequence[str], **options) -> list[SparseVector]:
        return self.encode(texts, kind="document", **options)

    def tokenize(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Input token ids per text (special tokens included), at most ``max_length``."""
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        try:
            return [enc.ids for enc in self.tokenizer.encode_batch(texts)]
        finally:
            self.tokenizer.no_truncation()

    @staticmethod
    def _batches(token_ids: list[list[int]], batch_size: int,
                 progress: bool) -> Iterator[list[int]]:
        """Indices grouped into batches of similar length, longest first."""
        order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encoding", unit="batch")
        yield from batches

    def to_vector(self, ids: Sequence[int], pivot: np.ndarray, echo: np.ndarray | None,
                  keep_special: bool = True) -> SparseVector:
        """The vector of one text from its dense pivot weights and per-position echo weights."""
        echo_view = SparseView.empty() if echo is None else self._echo_view(
            np.asarray(ids), echo[: len(ids)], keep_special)
        return SparseVector(self._pivot_view(pivot, keep_special), echo_view)

    def _pivot_view(self, weights: np.ndarray, keep_special: bool) -> SparseView:
        ids = np.flatnonzero(weights > 0)
        return _view(ids, weights[ids], self.pivot_vocab, keep_special)

    def _echo_view(self, ids: np.ndarray, weights: np.ndarray, keep_special: bool) -> SparseView:
        """Sum the weights of every position holding the same token id."""
        if len(self.echo_ignored):
            weights = np.where(np.isin(ids, self.echo_ignored), 0.0, weights)
        unique, inverse = np.unique(ids, return_inverse=True)
        sums = np.bincount(inverse, weights=weights.astype(np.float64), minlength=len(unique))
        return _view(unique, sums, self.echo_vocab, keep_special)


def padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, mask)``, int64 [B, longest row], rows padded with ``pad`` on the right."""
    width = max(len(ids) for ids in rows)
    input_ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


def _view(ids: np.ndarray, weights: np.ndarray, vocab: Vocabulary,
          keep_special: bool) -> SparseView:
    """Positive weights only, heaviest first (the :class:`SparseView` invariant)."""
    keep = weights > 0
    if not keep_special and vocab.special_ids:
        keep &= ~np.isin(ids, list(vocab.special_ids))
    ids, weights = ids[keep].astype(np.int64), weights[keep].astype(np.float32)
    order = np.argsort(-weights, kind="stable")
    ids, weights = ids[order], weights[order]
    return SparseView(ids, weights, vocab.strings(ids))


def load_tokenizer(source: Path | None, role: str):
    """The ``tokenizers`` tokenizer in folder ``source`` (a hub id is fetched first)."""
    from tokenizers import Tokenizer

    if source is None:
        raise FileNotFoundError(f"no {role} tokenizer: the model folder has no tokenizer.json "
                                "and its config names no backbone checkpoint to take it from")
    path = Path(source) / "tokenizer.json"
    if not path.is_file():
        from milco_os.models.files import resolve_model_dir

        folder = resolve_model_dir(source, allow_patterns=["tokenizer*", "*.json", "vocab.txt"])
        path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{role} tokenizer: {path} not found")
    return Tokenizer.from_file(str(path))


def pad_id(tokenizer) -> int:
    for token in ("<pad>", "[PAD]"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0
