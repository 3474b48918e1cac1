"""Vocabulary pieces that carry no word: special tokens, the bare ``▁``, punctuation only.

A model trained by milco-os never puts weight on them (the pivot decoder's bias blocks
the English ones; ``MilcoConfig.echo_ignored_ids`` silences the source ones), so an
explanation only ever shows words.

>>> [t for t in ["<s>", "[CLS]", "[unused7]", "▁", ".", "##,", "▁\\"", "cat", "##s", "▁北京"]
...  if noise_term(t)]
['<s>', '[CLS]', '[unused7]', '▁', '.', '##,', '▁"']
"""

from __future__ import annotations

import string
import unicodedata
from typing import Any

import torch

PUNCTUATION = set(string.punctuation)


def noise_term(term: str) -> bool:
    """A special token (``<s>``, ``[CLS]``, ``[unused3]``...), the bare ``▁``, or a piece
    made only of punctuation or symbols (``.``, ``##,``, ``▁"``, ``。``)."""
    if len(term) > 2 and term[0] in "<[" and term[-1] in ">]":
        return True
    core = term.removeprefix("##").removeprefix("▁")
    return all(ch in PUNCTUATION or unicodedata.category(ch)[0] in "PSZ" for ch in core)


def noise_ids(tokenizer: Any) -> torch.Tensor:
    """Ids of the noise pieces of ``tokenizer``'s vocabulary, sorted."""
    vocab = tokenizer.get_vocab()
    return torch.tensor(sorted(i for piece, i in vocab.items() if noise_term(piece)),
                        dtype=torch.long)
