"""The PyTorch backend: a loaded :class:`~milco_os.models.base.SparseModel` runs the forward.

>>> import tempfile
>>> from milco_os.models.presets import init_model
>>> encoder = SparseEncoder.from_pretrained(init_model("tiny", tempfile.mkdtemp()))
>>> [vector] = encoder.encode(["Baltimore: the greatest city"], kind="query")
>>> len(vector.pivot) > 0 and len(vector.echo) > 0
True

Each text gives a :class:`~milco_os.vectors.sparse.SparseVector`: the pivot view over English
word pieces (``baltimore``, ``##ing``) and the echo view over the model's own input
pieces (``▁Bal``), where the echo weights of repeated pieces are summed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from milco_os.core.threads import torch_threads
from milco_os.encoders.base import TextEncoder, Vocabulary, load_tokenizer
from milco_os.models.base import SparseModel
from milco_os.models.registry import load_sparse_model

# Batch rows x positions whose vocabulary logits are held at once (~60 MB in fp32).
PIVOT_CHUNK_ROWS = 512


class SparseEncoder(TextEncoder):
    """Encode texts into sparse vectors with a MILCO or English SPLADE model in PyTorch."""

    backend = "torch"

    def __init__(self, model: SparseModel, tokenizer, pivot_vocab: Vocabulary,
                 echo_vocab: Vocabulary, device: torch.device,
                 dtype: torch.dtype | None = None) -> None:
        ignored = getattr(getattr(model, "config", None), "echo_ignored_ids", None) or []
        super().__init__(tokenizer, pivot_vocab, echo_vocab, model.max_input_positions, ignored)
        self.model = model.eval()
        self.device = device
        self.compute_dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)

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
        tokenizer = load_tokenizer(model.tokenizer_dirs.get("m"), "input (multilingual)")
        en = tokenizer if model.tokenizer_dirs.get("en") == model.tokenizer_dirs.get("m") else (
            load_tokenizer(model.tokenizer_dirs.get("en"), "English (pivot)"))
        pivot_vocab = Vocabulary.from_tokenizer(en)
        vocab_size = model.pivot_vocab_size
        if len(pivot_vocab) < vocab_size:
            raise ValueError(f"English tokenizer has {len(pivot_vocab)} pieces but the "
                             f"model's pivot vocabulary has {vocab_size}")
        return cls(model, tokenizer, pivot_vocab, Vocabulary.from_tokenizer(tokenizer),
                   device, dtype)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def running_on(self, threads: int) -> contextlib.AbstractContextManager:
        return torch_threads(threads)

    @torch.inference_mode()
    def forward(self, input_ids: np.ndarray, mask: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray | None]:
        ids_t = torch.from_numpy(input_ids).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        with self._autocast():
            hidden = self.model.encode_states(ids_t, mask_t)
            chunk = max(1, PIVOT_CHUNK_ROWS // len(input_ids))
            logits = self.model.pivot_from_states(hidden, mask_t, chunk_size=chunk)
            echo = self.model.echo_from_states(hidden, mask_t)
        pivot = torch.log1p(torch.relu(logits.float())).cpu().numpy()
        return pivot, None if echo is None else echo.float().cpu().numpy()
