"""Split long documents into overlapping passages by token windows.

The model reads at most ``max_length`` tokens; MILCO handles long documents
(e.g. MLDR) by encoding passages of a fixed token window and scoring a
document by its best passage. Windows are cut on the tokenizer's own
character offsets, so passages are exact substrings of the document in any
script (no whitespace assumption, which would fail for Chinese or Thai).

>>> from tokenizers import Tokenizer, models, pre_tokenizers
>>> tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
>>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
>>> PassageSplitter(tok, window=2, stride=2)("a b c d e")
['a b', 'c d', 'e']
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer


class PassageSplitter:
    """Passages of ``window`` tokens starting every ``stride`` tokens (default: no overlap).

    ``tokenizer`` is a ``tokenizers.Tokenizer`` or a fast ``transformers``
    tokenizer. Without a window, every text is one passage.
    """

    def __init__(self, tokenizer: Any, window: int | None, stride: int | None = None) -> None:
        stride = stride or window
        if window is not None and (window < 1 or not 0 < stride <= window):
            raise ValueError(f"passage window {window} / stride {stride}: "
                             "expected window >= 1 and 0 < stride <= window")
        self.window, self.stride = window, stride
        if hasattr(tokenizer, "backend_tokenizer"):  # a transformers fast tokenizer
            tokenizer = tokenizer.backend_tokenizer
        # A private copy without truncation or padding: we need every token's offsets.
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()

    def __call__(self, text: str) -> list[str]:
        if self.window is None:
            return [text]
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        offsets = [(a, b) for a, b in encoding.offsets if b > a]
        if len(offsets) <= self.window:
            return [text]
        passages = []
        for start in range(0, len(offsets), self.stride):
            span = offsets[start:start + self.window]
            passages.append(text[span[0][0]:span[-1][1]])
            if start + self.window >= len(offsets):
                break
        return passages
