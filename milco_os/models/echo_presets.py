"""Randomly initialised echo-LLM encoders (Mistral architecture) for tests and benchmarks.

Presets (all with a byte-level BPE tokenizer of about 1,000 pieces trained here on
NTREX-128 English when ``../shared`` is present, else on a built-in text; ids 0, 1, 2
are ``<unk>``, ``<s>``, ``</s>`` as in Mistral, and ``<s>`` is prepended):

- ``tiny``: 2 layers, hidden 32 (seconds on a CPU);
- ``small``: 2 layers, hidden 256 (a LoRA of rank 16 is then a few percent of the weights).

>>> import tempfile
>>> folder = init_echo_model("tiny", tempfile.mkdtemp())
>>> sorted(p.name for p in folder.iterdir())[:3]
['config.json', 'llm', 'tokenizer.json']
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from transformers import MistralConfig, MistralForCausalLM

from milco_os.models.echo_llm import EchoLlmConfig, EchoLlmModel, ensure_padding_token
from milco_os.models.presets import shared_dir

ECHO_PRESETS = ("tiny", "small")
TOKENIZER_PIECES = 1000
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
# (layers, hidden, attention heads, key/value heads, MLP width)
_SHAPES = {"tiny": (2, 32, 4, 2, 64), "small": (2, 256, 8, 4, 512)}
_FALLBACK_TEXT = (
    "The cat sleeps on the warm sofa all afternoon. Fresh bread is baked in the oven each "
    "morning. The library lends books for three weeks. A storm closed the harbour for two "
    "days. The night train leaves the station at ten. Climbers reached the mountain summit "
    "at dawn. Baltimore is the greatest city in America. Music, news, people and the world."
)


def init_echo_model(preset: str, out_dir: str | Path, seed: int = 0,
                    assets: Path | None | str = "auto") -> Path:
    """Write a random echo-LLM encoder of ``preset`` shapes to ``out_dir``; return the folder."""
    if preset not in _SHAPES:
        raise ValueError(f"unknown echo-LLM preset {preset!r}; expected one of {ECHO_PRESETS}")
    assets = shared_dir() if assets == "auto" else assets
    tokenizer_dir = Path(tempfile.mkdtemp(prefix="echo-tok-"))
    vocab_size = train_tokenizer(_corpus(assets), tokenizer_dir)
    layers, hidden, heads, kv_heads, mlp = _SHAPES[preset]
    llm_config = MistralConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=mlp,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    llm = MistralForCausalLM(llm_config)
    config = EchoLlmConfig(llm_config=llm_config.to_dict(), pivot_vocab_size=vocab_size)
    model = EchoLlmModel(config, llm)
    model.tokenizer_dirs = {"m": tokenizer_dir, "en": tokenizer_dir}
    return model.save_pretrained(out_dir)


def train_tokenizer(texts: list[str], out: Path, pieces: int = TOKENIZER_PIECES) -> int:
    """A byte-level BPE tokenizer (Mistral's special ids, ``<s>`` prepended) in ``out``;
    returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=pieces, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    settings = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                "model_max_length": 1024}
    (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    ensure_padding_token(out)
    return tokenizer.get_vocab_size()


def _corpus(assets: Path | None) -> list[str]:
    english = None if assets is None else assets / "data" / "ntrex128" / "newstest2019-src.eng.txt"
    if english is not None and english.is_file():
        return english.read_text(encoding="utf-8").splitlines()
    return _FALLBACK_TEXT.split(". ")
