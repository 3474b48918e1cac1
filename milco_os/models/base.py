"""The contract every sparse model implements, and the math its families share.

A sparse model turns token ids into encoder states H, then H into the two views:

- ``pivot_from_states``: RAW pivot-vocabulary logits, masked-max-pooled over positions
  (``pivot = log1p(relu(logits))``);
- ``echo_from_states``: one weight per input position (``None`` without an echo head).

:class:`SparseModel` is an ``nn.Module`` base class: the sparse encoder, the training
stages and the CLI use only what it declares, so a new backbone is one subclass plus
one entry in :mod:`milco_os.models.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from milco_os.core.errors import ModelLoadError


class CheckpointError(ModelLoadError):
    """A checkpoint folder or state dict does not match the model built from its config."""


@dataclass
class MilcoOutput:
    """What :meth:`SparseModel.forward` returns.

    ``pivot_logits`` are RAW masked-max-pooled logits (no relu, no log1p), as the
    alignment loss uses them; ``pivot = log1p(relu(pivot_logits))``. ``echo`` holds
    one weight per position (``None`` for models without an echo head).
    """

    hidden_states: torch.Tensor  # [B, L, H]
    pivot_logits: torch.Tensor  # [B, V_pivot]
    pivot: torch.Tensor  # [B, V_pivot]
    echo: torch.Tensor | None  # [B, L]


def masked_max_logits(
    head: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    mask: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``max over L of head(hidden) * mask``, computed ``chunk_size`` positions at a time.

    A running maximum keeps memory at ``B x chunk x V`` instead of ``B x L x V``;
    autograd flows through it (max picks one position per entry, like the full max).
    Padding is multiplied by 0, not set to -inf, as in the released model.
    """
    length = hidden.shape[1]
    step = length if chunk_size is None else max(1, chunk_size)
    pooled: torch.Tensor | None = None
    for start in range(0, length, step):
        logits = head(hidden[:, start : start + step])
        chunk_mask = mask[:, start : start + step]
        if not bool(chunk_mask.all()):  # multiplying by ones changes nothing: skip it
            logits = logits * chunk_mask[..., None].to(logits.dtype)
        chunk_max = logits.amax(dim=1)
        pooled = chunk_max if pooled is None else torch.maximum(pooled, chunk_max)
    if pooled is None:
        raise ValueError("cannot pool an empty sequence (length 0)")
    return pooled


def model_output(hidden: torch.Tensor, pivot_logits: torch.Tensor,
                 echo: torch.Tensor | None) -> MilcoOutput:
    """A :class:`MilcoOutput` from encoder states, raw pivot logits and echo weights."""
    return MilcoOutput(hidden, pivot_logits, torch.log1p(torch.relu(pivot_logits)), echo)


def tie_decoder_bias(head: nn.Module) -> None:
    """Share one bias between a BERT MLM head's decoder and its ``predictions.bias``.

    BERT keeps them as one parameter; building, loading or assigning a state dict
    breaks the link, so every path that does so calls this afterwards.
    """
    head.predictions.decoder.bias = head.predictions.bias


def load_english_head(head: nn.Module, source: nn.Module) -> None:
    """Copy a BertForMaskedLM's MLM head (``source``, its ``.cls``) into ``head``,
    decoder untied from the source's word embeddings, bias shared."""
    state = {k: v.detach().clone() for k, v in source.state_dict().items()}
    state["predictions.decoder.bias"] = state["predictions.bias"]
    head.load_state_dict(state)
    tie_decoder_bias(head)


class SparseModel(nn.Module, ABC):
    """The contract of a sparse model (MILCO, English SPLADE, echo-LLM).

    Subclasses set ``config`` and ``tokenizer_dirs`` (``{"m": input tokenizer folder,
    "en": pivot tokenizer folder}``) and implement the abstract members.
    """

    config: Any
    tokenizer_dirs: dict[str, Path]

    # ----- what the model is -----
    @property
    def pivot_vocab_size(self) -> int:
        """Size of the pivot vocabulary (the columns of ``pivot_logits``); a single-backbone
        model's own vocabulary unless a subclass says otherwise."""
        return self.config.vocab_size

    @property
    def echo_vocab_size(self) -> int:
        """Size of the echo view's vocabulary (the input pieces); 0 without an echo view."""
        return 0

    @property
    def max_input_positions(self) -> int:
        """Longest input, in tokens, the position embeddings allow."""
        return self.config.max_position_embeddings

    @property
    def has_echo(self) -> bool:
        return False

    def echo_scale(self) -> float | None:
        """The echo view's scale, ``None`` without an echo head."""
        return None

    def echo_parameters(self) -> list[nn.Parameter]:
        """The parameters of the echo view (head and scale); empty without one."""
        return []

    @abstractmethod
    def num_parameters_by_part(self) -> dict[str, int]:
        """Parameter counts per named part."""

    # ----- the math -----
    @abstractmethod
    def encode_states(self, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
        """Encoder states aligned with the input positions, [B, L, H]."""

    @abstractmethod
    def pivot_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pivot-vocabulary logits per position, [B, L, V_pivot]."""

    def pivot_from_states(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                          chunk_size: int | None = None) -> torch.Tensor:
        """RAW pivot logits, [B, V_pivot]: masked max over positions (no relu, no log1p)."""
        return masked_max_logits(self.pivot_head, hidden, attention_mask, chunk_size)

    def echo_from_states(self, hidden: torch.Tensor,
                         attention_mask: torch.Tensor) -> torch.Tensor | None:
        """Echo weights per position, [B, L]; ``None`` without an echo head."""
        return None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                chunk_size: int | None = None) -> MilcoOutput:
        hidden = self.encode_states(input_ids, attention_mask)
        pivot_logits = self.pivot_from_states(hidden, attention_mask, chunk_size)
        return model_output(hidden, pivot_logits, self.echo_from_states(hidden, attention_mask))

    # ----- files -----
    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> SparseModel:
        """Load a model folder of this family."""

    @abstractmethod
    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write a folder :meth:`from_pretrained` reads back; return it."""

