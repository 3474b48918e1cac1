"""Text to sparse vectors: the inference API of MILCO (and English SPLADE) models.

>>> import tempfile
>>> from milco_os.models.presets import init_model
>>> encoder = SparseEncoder.from_pretrained(init_model("tiny", tempfile.mkdtemp()))
>>> [vector] = encoder.encode(["Baltimore: the greatest city"], kind="query")
>>> len(vector.pivot) > 0 and len(vector.echo) > 0
True

Each text gives a :class:`~milco_os.sparse.SparseVector`: the pivot view over English
word pieces (``baltimore``, ``##ing``) and the echo view over the model's own input
pieces (``▁Bal``), where the echo weights of repeated pieces are summed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from milco_os.corpus import unicode_problem
from milco_os.models.base import SparseModel
from milco_os.models.files import resolve_model_dir
from milco_os.models.registry import load_sparse_model
from milco_os.sparse import SparseVector, SparseView
from milco_os.threads import encoding_threads

KINDS = ("query", "document")
DEFAULT_MAX_LENGTH = {"query": 64, "document": 512}
# Batch rows x positions whose vocabulary logits are held at once (~60 MB in fp32).
PIVOT_CHUNK_ROWS = 512


class Vocabulary:
    """Term strings by id, and the ids of special tokens."""

    def __init__(self, terms: Sequence[str], special_ids: frozenset[int]) -> None:
        self.terms = np.array(terms, dtype=object)  # fancy indexing: ids -> strings
        self.special_ids = special_ids

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocabulary:
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        terms = [""] * (max(vocab.values()) + 1)
        for term, i in vocab.items():
            terms[i] = term
        specials = {i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
        return cls(terms, frozenset(specials))

    def __len__(self) -> int:
        return len(self.terms)


class SparseEncoder:
    """Encode texts into :class:`SparseVector` with a MILCO or English SPLADE model."""

    def __init__(self, model: SparseModel, tokenizer, pivot_vocab: Vocabulary,
                 echo_vocab: Vocabulary, device: torch.device,
                 dtype: torch.dtype | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pivot_vocab = pivot_vocab
        self.echo_vocab = echo_vocab
        self.device = device
        self.compute_dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        self.pad_id = _pad_id(tokenizer)
        self.max_positions = model.max_input_positions
        # Source pieces whose positions echo nothing (a milco-os-trained model's config;
        # released checkpoints have none): special tokens, bare "▁", punctuation.
        ignored = getattr(getattr(model, "config", None), "echo_ignored_ids", None) or []
        self.echo_ignored = np.asarray(sorted(ignored), dtype=np.int64)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> SparseEncoder:
        """Load a model folder (or a named model such as ``milco-small``) and its tokenizers.

        ``device``: default CUDA when available, else CPU. ``dtype``: the compute precision
        (default bf16 autocast on GPU, as the release encodes, and fp32 on CPU); the
        weights stay fp32.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = load_sparse_model(path, device=device)
        tokenizer = _load_tokenizer(model.tokenizer_dirs.get("m"), "input (multilingual)")
        en = tokenizer if model.tokenizer_dirs.get("en") == model.tokenizer_dirs.get("m") else (
            _load_tokenizer(model.tokenizer_dirs.get("en"), "English (pivot)"))
        pivot_vocab = Vocabulary.from_tokenizer(en)
        vocab_size = model.pivot_vocab_size
        if len(pivot_vocab) < vocab_size:
            raise ValueError(f"English tokenizer has {len(pivot_vocab)} pieces but the "
                             f"model's pivot vocabulary has {vocab_size}")
        return cls(model, tokenizer, pivot_vocab, Vocabulary.from_tokenizer(tokenizer),
                   device, dtype)

    def encode(self, texts: Sequence[str], kind: str = "query", batch_size: int = 32,
               max_length: int | None = None, keep_special_tokens: bool = True,
               progress: bool = False, threads: int | None = None) -> list[SparseVector]:
        """One :class:`SparseVector` per text, in input order.

        Texts are sorted by length and padded per batch; ``max_length`` defaults to 64
        tokens for queries and 512 for documents (capped by the model's positions).
        ``keep_special_tokens=False`` drops special tokens (``<s>``, ``</s>``, ``[CLS]``...)
        from both views; by default they are kept, as the model was trained with them.
        ``threads``: torch threads for this call [default: :mod:`milco_os.threads`' policy,
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
        with encoding_threads(len(token_ids), threads):
            for batch in self._batches(token_ids, batch_size, progress):
                for index, vector in zip(batch, self._encode_batch(
                        [token_ids[i] for i in batch], keep_special_tokens), strict=True):
                    results[index] = vector
        return results  # type: ignore[return-value]

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

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    @torch.inference_mode()
    def _encode_batch(self, batch: list[list[int]], keep_special: bool) -> list[SparseVector]:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with self._autocast():
            hidden = self.model.encode_states(input_ids, mask)
            chunk = max(1, PIVOT_CHUNK_ROWS // len(batch))
            logits = self.model.pivot_from_states(hidden, mask, chunk_size=chunk)
            echo = self.model.echo_from_states(hidden, mask)
        pivot = torch.log1p(torch.relu(logits.float())).cpu().numpy()
        echo_np = None if echo is None else echo.float().cpu().numpy()
        return [self.to_vector(ids, pivot[row], None if echo_np is None else echo_np[row],
                               keep_special)
                for row, ids in enumerate(batch)]

    def to_vector(self, ids: Sequence[int], pivot: np.ndarray, echo: np.ndarray | None,
                  keep_special: bool = True) -> SparseVector:
        """The vector of one text from its dense pivot weights and per-position echo weights."""
        echo_view = SparseView.empty() if echo is None else self._echo_view(
            np.asarray(ids), echo[: len(ids)], keep_special)
        return SparseVector(self._pivot_view(pivot, keep_special), echo_view)

    def _pivot_view(self, weights: np.ndarray, keep_special: bool) -> SparseView:
        ids = np.flatnonzero(weights > 0)
        return self._view(ids, weights[ids], self.pivot_vocab, keep_special)

    def _echo_view(self, ids: np.ndarray, weights: np.ndarray, keep_special: bool) -> SparseView:
        """Sum the weights of every position holding the same token id."""
        if len(self.echo_ignored):
            weights = np.where(np.isin(ids, self.echo_ignored), 0.0, weights)
        unique, inverse = np.unique(ids, return_inverse=True)
        sums = np.bincount(inverse, weights=weights.astype(np.float64), minlength=len(unique))
        return self._view(unique, sums, self.echo_vocab, keep_special)

    @staticmethod
    def _view(ids: np.ndarray, weights: np.ndarray, vocab: Vocabulary,
              keep_special: bool) -> SparseView:
        """Positive weights only, heaviest first (the :class:`SparseView` invariant)."""
        keep = weights > 0
        if not keep_special and vocab.special_ids:
            keep &= ~np.isin(ids, list(vocab.special_ids))
        ids, weights = ids[keep].astype(np.int64), weights[keep].astype(np.float32)
        order = np.argsort(-weights, kind="stable")
        ids, weights = ids[order], weights[order]
        return SparseView(ids, weights, tuple(vocab.terms[ids]))


def _load_tokenizer(source: Path | None, role: str):
    from tokenizers import Tokenizer

    if source is None:
        raise FileNotFoundError(f"no {role} tokenizer: the model folder has no tokenizer.json "
                                "and its config names no backbone checkpoint to take it from")
    folder = resolve_model_dir(source, allow_patterns=["tokenizer*", "*.json", "vocab.txt"])
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{role} tokenizer: {path} not found")
    return Tokenizer.from_file(str(path))


def _pad_id(tokenizer) -> int:
    for token in ("<pad>", "[PAD]"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0
