"""Echo-LLM SPLADE: a decoder-only causal LM (Mistral, Qwen2, Llama) as a sparse encoder.

The Echo-Mistral-SPLADE recipe: the text is given twice (``<s> text text``, with an
optional prefix and separator between the copies) and only the SECOND copy's positions
are pooled, so every pooled state has attended to the whole text despite causal
attention. Vocabulary logits go through SPLADE pooling, ``log1p(relu(max over
positions))``, giving the same pivot view as MILCO (the echo view stays empty), so
vectors, pruning, ingestion and search work unchanged.

The pivot head is either the LLM's own LM head (pivot vocabulary = the LLM's), or, as in
MILCO, a connector ``GELU(Linear(H))`` feeding an English BERT MLM head.

Memory: the backbone runs to hidden states only; the second-copy states are gathered
(``[B, L, H]``) and the head's logits are max-pooled a few positions at a time, each
chunk under activation checkpointing while training, so ``[B, 2L, V]`` (or ``[B, L, V]``)
logits never exist at once.

Folder layout (``save_pretrained``): ``config.json`` (``model_type: "echo-llm"``),
``llm/`` (a plain Hugging Face folder of the backbone, LoRA merged), ``heads.safetensors``
(connector + English head, when used), ``adapter/`` (the LoRA adapter, when trained with
one), tokenizer files (``en_tokenizer/`` for the English head's).

>>> import tempfile
>>> from milco_os.models.echo_presets import init_echo_model
>>> model = EchoLlmModel.from_pretrained(init_echo_model("tiny", tempfile.mkdtemp()))
>>> ids = torch.tensor([[1, 40, 41, 42]])
>>> out = model(ids, torch.ones_like(ids))
>>> out.pivot.shape[1] == model.config.vocab_size, bool((out.pivot >= 0).all())
(True, True)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.bert.modeling_bert import BertForMaskedLM, BertOnlyMLMHead

from milco_os.models.base import (
    CheckpointError,
    SparseModel,
    load_english_head,
    masked_max_logits,
    tie_decoder_bias,
)
from milco_os.models.files import (
    EN_TOKENIZER_DIR,
    SAFETENSORS_NAME,
    config_fields,
    copy_tokenizers,
    resolve_model_dir,
    save_safetensors,
)

ECHO_LLM_TYPE = "echo-llm"
LLM_DIR = "llm"
ADAPTER_DIR = "adapter"
HEADS_NAME = "heads.safetensors"
# Positions per chunk of head logits in the max-pooling (B x chunk x V floats at once).
DEFAULT_POOLING_CHUNK = 16
# The attention projections of the Mistral / Qwen2 / Llama families.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


class EchoLlmConfig(PretrainedConfig):
    """Configuration of an echo-LLM sparse encoder (``model_type="echo-llm"``).

    ``llm_config`` is the backbone's own config dict (with its ``model_type``), so the
    model is buildable offline. ``echo_prefix_ids`` / ``echo_separator_ids`` are token
    ids placed before the first copy and between the copies. ``pivot_vocab_size`` caps
    the LM-head vocabulary at the tokenizer's size (some LLMs pad their embedding
    matrix). ``en_head_config`` (a ``BertConfig`` dict) selects the connector + English
    MLM head instead of the LM head.
    """

    model_type = ECHO_LLM_TYPE

    llm_config: dict | None = None
    llm_checkpoint: str | None = None
    echo: bool = True
    echo_prefix_ids: list[int] | None = None
    echo_separator_ids: list[int] | None = None
    pivot_vocab_size: int | None = None
    en_head_config: dict | None = None
    lsr_encoder_checkpoint: str | None = None
    pooling_chunk_size: int | None = DEFAULT_POOLING_CHUNK

    def llm(self) -> PretrainedConfig:
        if not self.llm_config or "model_type" not in self.llm_config:
            raise CheckpointError("echo-llm config has no llm_config with a model_type")
        return AutoConfig.for_model(self.llm_config["model_type"],
                                    **config_fields(self.llm_config))

    def head_config(self) -> BertConfig | None:
        if self.en_head_config is None:
            return None
        return BertConfig(**config_fields(self.en_head_config))

    @property
    def vocab_size(self) -> int:
        """Size of the pivot vocabulary (the English head's, or the capped LM head's)."""
        head = self.head_config()
        if head is not None:
            return head.vocab_size
        return self.pivot_vocab_size or self.llm().vocab_size

    @property
    def max_position_embeddings(self) -> int:
        """Longest input text in tokens: the backbone's positions hold both copies."""
        total = self.llm().max_position_embeddings - len(self.template_ids()[0])
        if not self.echo:
            return total
        return (total - len(self.template_ids()[1]) - 1) // 2 + 1

    def template_ids(self) -> tuple[list[int], list[int]]:
        return list(self.echo_prefix_ids or []), list(self.echo_separator_ids or [])


# AutoConfig and AutoTokenizer (used by the training collators) then read our folders.
AutoConfig.register(ECHO_LLM_TYPE, EchoLlmConfig, exist_ok=True)


@dataclass(frozen=True)
class EchoInputs:
    """The doubled batch fed to the LLM and where each input position is pooled from.

    ``source[b, j]`` is the position in ``input_ids[b]`` whose state stands for input
    position ``j``: its copy in the second half (the first half, with ``echo`` off).
    """

    input_ids: Tensor  # [B, L2], right-padded
    attention_mask: Tensor  # [B, L2]
    source: Tensor  # [B, L]


def echo_inputs(input_ids: Tensor, attention_mask: Tensor, bos_token_id: int | None,
                prefix: list[int], separator: list[int], echo: bool = True,
                pad_token_id: int = 0) -> EchoInputs:
    """Build ``[bos] prefix text separator text`` per row (``[bos] prefix text`` without echo).

    The tokenizer's leading BOS (when present) is kept once, at the front, and is not
    pooled: its input position is pointed at the first pooled state (a duplicate, which
    leaves a max unchanged). Any padding side works; the output is right-padded.
    """
    rows, sources = [], torch.zeros_like(input_ids)
    for b in range(input_ids.shape[0]):
        valid = torch.nonzero(attention_mask[b]).squeeze(1)
        tokens = input_ids[b, valid]
        lead = int(bos_token_id is not None and len(tokens) > 0 and tokens[0] == bos_token_id)
        text = tokens[lead:]
        head = [tokens[:lead], tokens.new_tensor(prefix)]
        copies = [text, tokens.new_tensor(separator), text] if echo else [text]
        row = torch.cat(head + copies)
        pooled = torch.arange(len(row) - len(text), len(row), device=row.device)
        first = pooled[:1] if len(text) else torch.tensor([len(row) - 1], device=row.device)
        sources[b, valid] = torch.cat([first.expand(lead), pooled])
        rows.append(row)
    width = max(len(r) for r in rows)
    ids = input_ids.new_full((len(rows), width), pad_token_id)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, : len(row)], mask[b, : len(row)] = row, 1
    return EchoInputs(ids, mask, sources)


class EchoLlmModel(SparseModel):
    """A causal LM used as a SPLADE encoder with echo pooling (see the module docstring)."""

    def __init__(self, config: EchoLlmConfig, llm: PreTrainedModel | None = None) -> None:
        super().__init__()
        self.config = config
        head_config = config.head_config()
        if llm is None:
            auto = AutoModelForCausalLM if head_config is None else AutoModel
            llm = auto.from_config(config.llm())
        self.llm: nn.Module = llm
        self._pivot_columns = config.vocab_size  # read per chunk of logits: kept, not derived
        hidden = self.backbone().config.hidden_size
        if head_config is None:
            self.projector = self.mlm_head = None
        else:
            self.projector = nn.Linear(hidden, head_config.hidden_size)
            self.mlm_head = BertOnlyMLMHead(head_config)
            tie_decoder_bias(self.mlm_head)
        self.tokenizer_dirs: dict[str, Path] = {}

    # ----- parts -----
    def backbone(self) -> PreTrainedModel:
        """The transformers model (LoRA layers, when added, sit inside it)."""
        if hasattr(self.llm, "peft_config"):
            return self.llm.get_base_model()
        return self.llm

    @property
    def lora_config(self):
        """The peft ``LoraConfig`` when a LoRA adapter is attached, else ``None``."""
        return getattr(self.llm, "peft_config", {}).get("default")

    def add_lora(self, r: int = 16, alpha: float = 8, dropout: float = 0.1,
                 target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS) -> None:
        """Attach a LoRA adapter (B = 0, so outputs are unchanged) and freeze the backbone."""
        from peft import LoraConfig, get_peft_model

        if self.lora_config is not None:
            raise ValueError("this model already has a LoRA adapter")
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                            target_modules=list(target_modules), bias="none")
        self.llm = get_peft_model(self.llm, config)

    # ----- the math -----
    def echo_inputs(self, input_ids: Tensor, attention_mask: Tensor) -> EchoInputs:
        prefix, separator = self.config.template_ids()
        llm_config = self.backbone().config
        return echo_inputs(input_ids, attention_mask, llm_config.bos_token_id, prefix,
                           separator, self.config.echo, _pad_token_id(llm_config))

    def encode_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Second-copy states aligned with the input positions, [B, L, H]."""
        doubled = self.echo_inputs(input_ids, attention_mask)
        states = self.backbone().base_model(input_ids=doubled.input_ids,
                                            attention_mask=doubled.attention_mask,
                                            use_cache=False).last_hidden_state
        index = doubled.source.unsqueeze(-1).expand(-1, -1, states.shape[-1])
        return states.gather(1, index)

    def pivot_head(self, hidden: Tensor) -> Tensor:
        """Pivot-vocabulary logits per position (modules are called, not their weights,
        so DeepSpeed ZeRO-3 can gather partitioned parameters)."""
        if self.mlm_head is not None:
            return self.mlm_head(nn.functional.gelu(self.projector(hidden)))
        logits = self.backbone().get_output_embeddings()(hidden)
        return logits[..., : self._pivot_columns]

    def pivot_from_states(self, hidden: Tensor, attention_mask: Tensor,
                          chunk_size: int | None = None) -> Tensor:
        """RAW pooled logits [B, V]: the masked max over positions, ``chunk_size`` at a time.

        ``chunk_size`` None: the config's ``pooling_chunk_size`` (itself None or 0: all
        positions at once). With gradients on, each chunk is checkpointed, so backward
        keeps ``[B, V]`` per chunk instead of the chunk's logits.
        """
        step = chunk_size if chunk_size is not None else self.config.pooling_chunk_size
        step = step or hidden.shape[1]
        if not torch.is_grad_enabled():
            return masked_max_logits(self.pivot_head, hidden, attention_mask, step)
        chunks = [
            checkpoint(masked_max_logits, self.pivot_head, hidden[:, start : start + step],
                       attention_mask[:, start : start + step], use_reentrant=False)
            for start in range(0, hidden.shape[1], step)
        ]
        return functools.reduce(torch.maximum, chunks)

    # ----- building -----
    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> EchoLlmModel:
        """Load an echo-LLM folder written by :meth:`save_pretrained` (LoRA merged)."""
        folder = resolve_model_dir(path)
        config = EchoLlmConfig.from_pretrained(folder)
        auto = AutoModelForCausalLM if config.en_head_config is None else AutoModel
        llm = auto.from_pretrained(str(folder / LLM_DIR), dtype=dtype or "auto")
        model = cls(config, llm)
        if model.mlm_head is not None:
            model.load_heads(folder / HEADS_NAME)
        model.tokenizer_dirs = _tokenizer_dirs(folder)
        model.eval()
        return model.to(device=device, dtype=dtype)

    @classmethod
    def from_causal_lm(cls, path: str | Path, *, english_head: str | Path | None = None,
                       echo: bool = True, prefix: str = "", separator: str = "",
                       dtype: torch.dtype | None = None) -> EchoLlmModel:
        """A fresh echo-LLM encoder from a Hugging Face causal-LM folder (with tokenizer.json).

        ``english_head``: a BertForMaskedLM folder (e.g. SPLADE) whose MLM head (decoder
        untied) is fed by a fresh connector; else the LLM's own LM head is used.
        """
        folder = resolve_model_dir(path)
        auto = AutoModelForCausalLM if english_head is None else AutoModel
        llm = auto.from_pretrained(str(folder), dtype=dtype or "auto")
        tokenizer = _read_tokenizer(folder)
        config = EchoLlmConfig(
            llm_config=llm.config.to_dict(), llm_checkpoint=str(path), echo=echo,
            echo_prefix_ids=_template_ids(tokenizer, prefix),
            echo_separator_ids=_template_ids(tokenizer, separator),
            pivot_vocab_size=min(tokenizer.get_vocab_size(), llm.config.vocab_size),
        )
        if english_head is not None:
            splade = BertForMaskedLM.from_pretrained(str(english_head))
            config.en_head_config = splade.config.to_dict()
            config.lsr_encoder_checkpoint = str(english_head)
        model = cls(config, llm)
        if english_head is not None:
            load_english_head(model.mlm_head, splade.cls)
            model.projector.to(llm.dtype), model.mlm_head.to(llm.dtype)
        model.tokenizer_dirs = {"m": folder, "en": Path(english_head or folder)}
        return model

    def load_heads(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(path)
        state.setdefault("mlm_head.predictions.decoder.bias", state["mlm_head.predictions.bias"])
        heads = nn.ModuleDict({"projector": self.projector, "mlm_head": self.mlm_head})
        heads.load_state_dict(state, strict=True)
        tie_decoder_bias(self.mlm_head)

    # ----- saving -----
    def save_pretrained(self, out_dir: str | Path,
                        state_dict: Mapping[str, Tensor] | None = None) -> Path:
        """Write the folder layout of the module docstring, LoRA merged into ``llm/``.

        ``state_dict`` (e.g. DeepSpeed's consolidated fp32 weights, with this module's
        key names) replaces the module's own weights in the saved copy.
        """
        out = Path(out_dir)
        (out / LLM_DIR).mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu") for k, v in (state_dict or self.state_dict()).items()}
        llm_state = _strip(state, "llm.")
        lora = self.lora_config
        if lora is not None:
            llm_state = _strip(llm_state, "base_model.model.")
            adapter = {k: v for k, v in llm_state.items() if ".lora_" in k}
            llm_state = merge_lora(llm_state, lora.lora_alpha / lora.r)
            _save_adapter(lora, adapter, out / ADAPTER_DIR)
        self.backbone().config.save_pretrained(out / LLM_DIR)
        save_safetensors(llm_state, out / LLM_DIR / SAFETENSORS_NAME)
        heads = {k: v for k, v in state.items() if k.startswith(("projector.", "mlm_head."))}
        if heads:
            save_safetensors(heads, out / HEADS_NAME)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(out)
        dirs = dict(self.tokenizer_dirs)
        if dirs.get("en") == dirs.get("m"):
            dirs.pop("en", None)  # the pivot vocabulary is the LLM's own
        copy_tokenizers(dirs, out)
        ensure_padding_token(out)
        return out

    def load_training_weights(self, folder: str | Path) -> None:
        """Restore the trainable weights saved in ``folder`` into this (training) model:
        the adapter and heads with LoRA, every weight without."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if self.lora_config is not None:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(
                self.llm, load_file(folder / ADAPTER_DIR / "adapter_model.safetensors"))
            if getattr(result, "unexpected_keys", None):
                raise CheckpointError(f"{folder / ADAPTER_DIR}: unexpected adapter keys "
                                      f"{result.unexpected_keys[:10]}")
        else:
            self.backbone().load_state_dict(load_file(folder / LLM_DIR / SAFETENSORS_NAME),
                                            strict=True)
        if self.mlm_head is not None:
            self.load_heads(folder / HEADS_NAME)

    def num_parameters_by_part(self) -> dict[str, int]:
        parts = {"llm": self.llm, "projector": self.projector, "mlm_head": self.mlm_head}
        return {name: sum(p.numel() for p in part.parameters())
                for name, part in parts.items() if part is not None}


def merge_lora(state: Mapping[str, Tensor], scaling: float) -> dict[str, Tensor]:
    """Fold LoRA pairs into their base weights: ``W + scaling * B @ A`` per adapted Linear.

    ``state`` uses peft's in-model names (``x.base_layer.weight``,
    ``x.lora_A.default.weight``, ``x.lora_B.default.weight``); the result has the plain
    names (``x.weight``) of the unadapted model.
    """
    merged: dict[str, Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        module, sep, leaf = key.partition(".base_layer.")
        if not sep:
            merged[key] = value
            continue
        if leaf == "weight":
            a = state[f"{module}.lora_A.default.weight"].float()
            b = state[f"{module}.lora_B.default.weight"].float()
            value = (value.float() + scaling * (b @ a)).to(value.dtype)
        merged[f"{module}.{leaf}"] = value
    return merged


def _save_adapter(lora, adapter: Mapping[str, Tensor], out: Path) -> None:
    """The peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    out.mkdir(parents=True, exist_ok=True)
    lora.save_pretrained(str(out))
    renamed = {f"base_model.model.{k.replace('.default.', '.')}": v for k, v in adapter.items()}
    save_safetensors(renamed, out / "adapter_model.safetensors")


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _pad_token_id(config: PretrainedConfig) -> int:
    pad = getattr(config, "pad_token_id", None)
    return pad if isinstance(pad, int) else 0


def _read_tokenizer(folder: Path):
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no tokenizer.json (a fast tokenizer is needed)")
    return Tokenizer.from_file(str(path))


def _template_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids if text else []


def _tokenizer_dirs(folder: Path) -> dict[str, Path]:
    english = folder / EN_TOKENIZER_DIR
    return {"m": folder, "en": english if (english / "tokenizer.json").is_file() else folder}


def ensure_padding_token(folder: Path) -> None:
    """Name a padding token in ``tokenizer_config.json`` when the LLM's tokenizer has none
    (Mistral and Llama do not); masks make its id irrelevant. Also name the fast tokenizer
    class, since ``config.json`` describes the wrapper, not a tokenizer family."""
    path = folder / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    settings.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    if not settings.get("pad_token"):
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab()
        candidates = ("<pad>", "[PAD]", settings.get("unk_token"), "<unk>",
                      settings.get("eos_token"), "</s>", "<|endoftext|>")
        pad = next((t for t in candidates if isinstance(t, str) and t in vocab), None)
        if pad is None:
            raise CheckpointError(f"{folder}: the tokenizer has no token usable for padding")
        settings["pad_token"] = pad
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False), encoding="utf-8")

