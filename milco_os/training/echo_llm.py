"""Contrastive training of echo-LLM encoders (Echo-Mistral-SPLADE) with LoRA or in full.

The stage is :class:`~milco_os.training.stages.ContrastiveStage` (KL distillation or
InfoNCE with in-batch negatives, plus L1 or FLOPS on the pivot view) with an
:class:`~milco_os.models.echo_llm.EchoLlmModel` student. ``cfg.model`` selects it with
``kind: echo-llm`` and one source:

- ``path``: an echo-LLM folder (e.g. a previous checkpoint);
- ``backbone``: a Hugging Face causal-LM folder (Mistral, Qwen2, Llama), converted once
  into ``<output_dir>/init`` (``english_head``: a BERT MLM folder fed through a fresh
  connector instead of the LM head; ``echo``, ``echo_prefix``, ``echo_separator``);
- ``preset``: a random Mistral-architecture model (``tiny``, ``small``).

and how it trains: ``lora`` (``r`` 16, ``alpha`` 8, ``dropout`` 0.1 on the attention
projections by default), or ``full_finetune: true``; ``gradient_checkpointing``;
``train_head`` (also train the LM head / English MLM head; a connector always trains).

>>> from milco_os.training.config import TrainConfig
>>> cfg = TrainConfig.from_file("training/configs/echo-mistral-tiny.yaml")  # doctest: +SKIP
>>> Trainer(cfg, EchoLlmContrastiveStage(cfg)).train()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from milco_os.models.echo_llm import ATTENTION_PROJECTIONS, ECHO_LLM_TYPE, EchoLlmModel
from milco_os.training.config import ConfigError, TrainConfig
from milco_os.training.stages import ContrastiveStage

SOURCES = ("path", "backbone", "preset")
# Settings fixed when a causal LM is converted into an echo-LLM folder.
CONVERSION_KEYS = ("english_head", "echo", "echo_prefix", "echo_separator")
INIT_DIR = "init"
# What the init folder was made from, written last: its presence means the folder is complete.
RECIPE_NAME = "recipe.json"


@dataclass(frozen=True)
class LoraSettings:
    """The adapter of the Mistral-SPLADE recipe: rank 16, alpha 8, dropout 0.1."""

    r: int = 16
    alpha: float = 8
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS


@dataclass(frozen=True)
class EchoTrainingOptions:
    """``cfg.model`` of an echo-LLM run, checked (see the module docstring)."""

    source: str
    location: str
    lora: LoraSettings | None = LoraSettings()
    gradient_checkpointing: bool = False
    train_head: bool = False
    english_head: str | None = None
    echo: bool = True
    echo_prefix: str = ""
    echo_separator: str = ""

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> EchoTrainingOptions:
        known = {"kind", *SOURCES, *CONVERSION_KEYS, "lora", "full_finetune",
                 "gradient_checkpointing", "train_head"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ConfigError(f"model: unknown key(s) {unknown} for kind {ECHO_LLM_TYPE!r}; "
                              f"known: {sorted(known)}")
        sources = [s for s in SOURCES if spec.get(s)]
        if len(sources) != 1:
            raise ConfigError(f"model: give exactly one of {SOURCES} for kind "
                              f"{ECHO_LLM_TYPE!r}; got {sources or 'none'}")
        conversion = sorted(k for k in CONVERSION_KEYS if k in spec)
        if conversion and sources[0] != "backbone":
            raise ConfigError(f"model: {conversion} only apply when converting a backbone; "
                              f"a {sources[0]} folder carries its own settings")
        if "lora" in spec and (spec["lora"] is False or spec.get("full_finetune")):
            raise ConfigError("model: full_finetune: true trains every weight without an "
                              "adapter; do not combine it with (or write it as) model.lora")
        lora_spec = spec.get("lora") or {}
        if not isinstance(lora_spec, Mapping):
            raise ConfigError(f"model.lora must be a mapping (r, alpha, dropout, "
                              f"target_modules), got {lora_spec!r}")
        try:
            lora = LoraSettings(**{k: tuple(v) if k == "target_modules" else v
                                   for k, v in lora_spec.items()})
        except TypeError as exc:
            raise ConfigError(f"model.lora: {exc}") from None
        if lora.r < 1 or not 0 <= lora.dropout < 1:
            raise ConfigError(f"model.lora: need r >= 1 and 0 <= dropout < 1, got {lora}")
        return cls(
            source=sources[0], location=str(spec[sources[0]]),
            lora=None if spec.get("full_finetune") else lora,
            gradient_checkpointing=bool(spec.get("gradient_checkpointing", False)),
            train_head=bool(spec.get("train_head", False)),
            english_head=spec.get("english_head"), echo=bool(spec.get("echo", True)),
            echo_prefix=str(spec.get("echo_prefix", "")),
            echo_separator=str(spec.get("echo_separator", "")),
        )


def is_echo_llm_spec(cfg: TrainConfig) -> bool:
    return cfg.model.get("kind") == ECHO_LLM_TYPE


def initial_folder(options: EchoTrainingOptions, output_dir: str | Path, seed: int) -> Path:
    """The echo-LLM folder training starts from: ``path`` itself, else ``output_dir/init``,
    written by the first process (rank 0) and reused while its recipe is unchanged."""
    if options.source == "path":
        return Path(options.location)
    out = Path(output_dir) / INIT_DIR
    recipe = {**dataclasses.asdict(options), "lora": None, "gradient_checkpointing": None,
              "train_head": None, "seed": seed}
    if int(os.environ.get("RANK", "0")) == 0 and not (out / RECIPE_NAME).is_file():
        _write_initial_folder(options, out, seed)
        (out / RECIPE_NAME).write_text(json.dumps(recipe, indent=2), encoding="utf-8")
    _wait_for(out / RECIPE_NAME)
    found = json.loads((out / RECIPE_NAME).read_text(encoding="utf-8"))
    if found != recipe:
        raise ConfigError(f"{out} was made from another model recipe ({found}); "
                          f"remove it or choose another output_dir")
    return out


def _write_initial_folder(options: EchoTrainingOptions, out: Path, seed: int) -> None:
    if options.source == "preset":
        from milco_os.models.echo_presets import init_echo_model

        init_echo_model(options.location, out, seed=seed)
        return
    model = EchoLlmModel.from_causal_lm(
        options.location, english_head=options.english_head, echo=options.echo,
        prefix=options.echo_prefix, separator=options.echo_separator)
    model.save_pretrained(out)


def _wait_for(path: Path, timeout_s: float = 4 * 3600) -> None:
    """Other ranks wait while rank 0 converts the backbone (minutes for a 7B model)."""
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s:.0f} s")
        time.sleep(5)


def prepare_for_training(model: EchoLlmModel, options: EchoTrainingOptions) -> None:
    """Choose what trains: a LoRA adapter (+ the connector, + the head with ``train_head``)
    or every weight; switch on gradient checkpointing of the backbone when asked."""
    if options.lora is None:
        model.requires_grad_(True)
    else:
        lora = options.lora
        model.add_lora(lora.r, lora.alpha, lora.dropout, lora.target_modules)
        if model.projector is not None:
            model.projector.requires_grad_(True)
        head = model.mlm_head or model.backbone().get_output_embeddings()
        head.requires_grad_(options.train_head)
    if options.gradient_checkpointing:
        model.backbone().activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})


def trainable_fraction(model: nn.Module) -> float:
    """Trainable parameters over all parameters."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / total


class EchoLlmContrastiveStage(ContrastiveStage):
    """Stage 2 (SCT) with an echo-LLM student; data, losses and loop are the MILCO ones."""

    def __init__(self, cfg: TrainConfig) -> None:
        if not is_echo_llm_spec(cfg):
            raise ConfigError(f"model.kind must be {ECHO_LLM_TYPE!r} for this stage")
        self.options = EchoTrainingOptions.from_spec(cfg.model)
        folder = initial_folder(self.options, cfg.output_dir, cfg.seed)
        super().__init__(dataclasses.replace(cfg, model={"path": str(folder)}))
        if not isinstance(self.model, EchoLlmModel):
            raise ConfigError(f"model: {folder} is not an echo-LLM folder "
                              f"(config.json model_type {ECHO_LLM_TYPE!r})")
        prepare_for_training(self.model, self.options)

    @staticmethod
    def save_model(model: EchoLlmModel, directory: Path,
                   state_dict: dict[str, Tensor] | None = None) -> None:
        """The merged model, plus the adapter when training with LoRA."""
        model.save_pretrained(directory, state_dict=state_dict)

    @staticmethod
    def load_model_weights(model: EchoLlmModel, directory: Path) -> None:
        model.load_training_weights(directory)
