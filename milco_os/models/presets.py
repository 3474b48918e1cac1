"""Randomly initialised MILCO models in the released layout, for tests and benchmarks.

Presets:

- ``tiny``: 2 encoder layers, hidden 16 and an English head of hidden 16, with the real
  XLM-R (250,002 pieces) and BERT (30,522 pieces) vocabularies when ``../shared`` is
  present: about 17 MB per weights file, almost all of it the 250,002 x 16 embedding.
  Without ``../shared``, small built-in tokenizers keep it well under 1 MB.
- ``small``: multilingual-e5-small shapes (12 x 384) with a BERT-tiny head (128).
- ``base``: the paper's shapes (XLM-R-large 24 x 1024 with a BERT-base head, 768): ~2.3 GB.

>>> import tempfile
>>> folder = init_model("tiny", tempfile.mkdtemp())
>>> sorted(p.name for p in folder.iterdir())[:3]
['config.json', 'en_tokenizer', 'model.safetensors']
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from milco_os.models.milco import MilcoConfig, MilcoModel

PRESETS = ("tiny", "small", "base")

# (encoder layers, encoder hidden, heads, English head hidden)
_SHAPES = {"tiny": (2, 16, 2, 16), "small": (12, 384, 12, 128), "base": (24, 1024, 16, 768)}

# Words for the fallback tokenizers (used only when ../shared is absent).
_FALLBACK_TEXT = (
    "the of and to in is was for on that with as by at from it an be are this city "
    "greatest baltimore america world news people year new first time music house "
    "der die und das ist ein eine stadt welt la le les et est une ville el los y es "
    "una ciudad mundo il di che è della città mondo"
)


def shared_dir() -> Path | None:
    """The ``shared/`` assets folder beside the checkout (or ``$MILCO_OS_SHARED``), if any."""
    env = os.environ.get("MILCO_OS_SHARED")
    candidate = Path(env) if env else Path(__file__).resolve().parents[3] / "shared"
    return candidate if (candidate / "models").is_dir() else None


def init_model(preset: str, out_dir: str | Path, seed: int = 0,
               assets: Path | None | str = "auto") -> Path:
    """Write a random MILCO of ``preset`` shapes to ``out_dir``; return the folder.

    ``assets`` is the shared-assets folder holding the real tokenizers (``"auto"``:
    :func:`shared_dir`; ``None``: use small built-in tokenizers).
    """
    if preset not in _SHAPES:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    assets = shared_dir() if assets == "auto" else assets
    tok_dirs = (_real_tokenizers(Path(assets)) if assets
                else _fallback_tokenizers(Path(tempfile.mkdtemp(prefix="milco-tok-"))))
    config = _preset_config(preset, tok_dirs)
    torch.manual_seed(seed)
    model = MilcoModel(config)
    model.tokenizer_dirs = tok_dirs
    return model.save_pretrained(out_dir, safe_serialization=True, pickle=True)


def _preset_config(preset: str, tok_dirs: dict[str, Path]) -> MilcoConfig:
    from tokenizers import Tokenizer

    layers, hidden, heads, en_hidden = _SHAPES[preset]
    m_vocab = Tokenizer.from_file(str(tok_dirs["m"] / "tokenizer.json")).get_vocab_size()
    en_vocab = Tokenizer.from_file(str(tok_dirs["en"] / "tokenizer.json")).get_vocab_size()
    encoder = {
        "vocab_size": m_vocab, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "intermediate_size": 4 * hidden,
        "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5,
        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
    }
    head = {"vocab_size": en_vocab, "hidden_size": en_hidden, "hidden_act": "gelu",
            "layer_norm_eps": 1e-12}
    return MilcoConfig(
        multilingual_encoder_checkpoint=None, lsr_encoder_checkpoint=None,
        en_vocab_size=en_vocab, m_vocab_size=m_vocab, en_hidden_size=en_hidden,
        m_hidden_size=hidden, echo=True, m_encoder_config=encoder, en_head_config=head,
    )


def _real_tokenizers(assets: Path) -> dict[str, Path]:
    return {"m": assets / "models" / "xlmr-tokenizer", "en": assets / "models" / "splade-tiny"}


def _fallback_tokenizers(out: Path) -> dict[str, Path]:
    """Small XLM-R-like and BERT-like tokenizers built with the ``tokenizers`` library."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel, WordPiece

    m_specials = ["<s>", "<pad>", "</s>", "<unk>"]
    m_vocab = {t: i for i, t in enumerate(m_specials + [f"▁{w}" for w in _FALLBACK_TEXT.split()])}
    m_tok = Tokenizer(WordLevel(m_vocab, unk_token="<unk>"))
    m_tok.pre_tokenizer = pre_tokenizers.Metaspace()
    m_tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    m_tok.add_special_tokens(m_specials)

    en_specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # "." and "%" too: feature names escape them, and tests must see that without ../shared
    pieces = sorted({w for w in _FALLBACK_TEXT.split() if w.isascii()}) + ["##s", "##ing", ":",
                                                                          ".", "%"]
    en_vocab = {t: i for i, t in enumerate(en_specials + pieces)}
    en_tok = Tokenizer(WordPiece(en_vocab, unk_token="[UNK]"))
    en_tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    en_tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    en_tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    en_tok.add_special_tokens(en_specials)

    dirs = {"m": out / "m", "en": out / "en"}
    for role, tok in (("m", m_tok), ("en", en_tok)):
        dirs[role].mkdir(parents=True, exist_ok=True)
        tok.save(str(dirs[role] / "tokenizer.json"))
    return dirs
