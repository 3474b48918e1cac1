"""The two MILCO training stages as :class:`~milco_os.training.trainer.Stage` objects.

- :class:`AlignmentStage` (SAP): the student's RAW max-pooled pivot logits of the
  non-English and of the English text both regress onto the frozen English SPLADE
  teacher's logits with SMSE. No sparsity term; the echo head is not trained.
- :class:`ContrastiveStage` (SCT): a fresh echo head (default init, scale 1); each
  query is scored against its group (1 positive + G-1 negatives) and trained with
  KL distillation from the teacher scores (or InfoNCE with in-batch negatives), plus
  ``lambda_q * R(q) + lambda_d * R(d)`` on the pivot view.

>>> from milco_os.training.config import TrainConfig
>>> cfg = TrainConfig.from_file("training/configs/tiny.yaml")  # doctest: +SKIP
>>> stage = AlignmentStage(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from milco_os.models.base import MilcoOutput, SparseModel, model_output
from milco_os.models.files import read_state_dict
from milco_os.models.milco import MilcoModel
from milco_os.models.registry import load_sparse_model
from milco_os.training.config import ConfigError, TrainConfig
from milco_os.training.data import (
    DISTILLATION_COLUMNS,
    DistillationGroups,
    GroupCollator,
    ParallelCollator,
    load_parallel_sources,
    load_rows,
)
from milco_os.training.losses import (
    group_scores,
    info_nce_loss,
    kl_group_loss,
    regulariser,
    score_matrix,
    smse,
)


@functools.lru_cache(maxsize=8)
def load_tokenizer(directory: str | Path) -> Any:
    """A fast tokenizer from a folder, with its padding token set when the folder omits it.

    Cached per folder: a 250k-piece tokenizer takes seconds to parse, and collators only
    read it.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        pad = next((t for t in ("<pad>", "[PAD]") if t in vocab), None)
        if pad is None:
            raise ConfigError(f"tokenizer in {directory} has no padding token")
        tokenizer.pad_token = pad
    return tokenizer


def build_student(cfg: TrainConfig) -> SparseModel:
    """The student of ``cfg.model``, first match of ``path`` (a MILCO or SPLADE folder, e.g.
    a stage-1 checkpoint), ``encoder`` + ``head`` (backbone folders), ``preset`` (random)."""
    spec = {k: os.path.expanduser(v) if isinstance(v, str) else v for k, v in cfg.model.items()}
    if spec.get("kind", "milco") != "milco":
        raise ConfigError(f"model.kind {spec['kind']!r}: this stage trains MILCO students "
                          "(echo-llm students train with stage sct)")
    if spec.get("path"):
        return load_sparse_model(spec["path"])
    if spec.get("encoder") and spec.get("head"):
        return MilcoModel.from_backbones(spec["encoder"], spec["head"], echo=False)
    if spec.get("preset"):
        from milco_os.models.presets import init_model

        rank = os.environ.get("RANK", "0")  # one folder per process: no concurrent writes
        folder = init_model(spec["preset"], Path(cfg.output_dir) / f"init-{rank}", seed=cfg.seed)
        return MilcoModel.from_pretrained(folder)
    raise ConfigError(f"model: expected preset, path, or encoder + head; got {spec}")


def attach_fresh_echo(model: MilcoModel) -> None:
    """Give ``model`` a newly initialised echo head (PyTorch default init) and scale 1."""
    hidden = model.m_model.config.hidden_size
    device = model.projector.weight.device
    model.echo = nn.Linear(hidden, 1).to(device)
    model.scale = nn.Parameter(torch.ones(1, device=device))
    model.config.echo = True


def save_model(model: nn.Module, directory: Path,
               state_dict: dict[str, Tensor] | None = None) -> None:
    """Save in the released layout; ``state_dict`` (e.g. DeepSpeed's fp32 master weights)
    replaces the module's own weights in the saved copy."""
    if state_dict is None:
        model.save_pretrained(directory)
        return
    with torch.device("meta"):
        copy = type(model)(model.config)
    copy.load_released_state({k: v.float().cpu() for k, v in state_dict.items()})
    copy.tokenizer_dirs = model.tokenizer_dirs
    copy.save_pretrained(directory)


def load_model_weights(model: nn.Module, directory: Path) -> None:
    """Copy saved weights into ``model`` in place (the optimizer keeps its parameters)."""
    model.load_state_dict(read_state_dict(directory), strict=True)


class _StageBase:
    """The student's forward pass, saving, loading and epochs, common to both stages."""

    cfg: TrainConfig
    model: SparseModel
    teacher: SparseModel | None = None
    dataset: Sequence[Any]
    cache: EncoderStateCache | None = None

    def freeze_parts(self) -> None:
        """Freeze what ``cfg.freeze_encoder`` / ``cfg.freeze_pivot`` name."""
        if (self.cfg.freeze_encoder or self.cfg.freeze_pivot) and not isinstance(self.model,
                                                                                 MilcoModel):
            raise ConfigError("freeze_encoder and freeze_pivot need a MILCO student "
                              f"(got {type(self.model).__name__})")
        if self.cfg.freeze_encoder:
            freeze(self.model.m_model)
        if self.cfg.freeze_pivot:
            freeze(self.model.projector)
            freeze(self.model.mlm_head)
        if self.cfg.cache_encoder_states:
            self.cache = EncoderStateCache(self.cfg.cache_max_positions)

    def student(self, model: nn.Module, enc: dict[str, Tensor]) -> MilcoOutput:
        """The student's outputs for a tokenized batch.

        A frozen encoder runs in eval mode without gradients (its states come from the
        cache when one is kept); a frozen pivot view is computed without gradients, so
        its vocabulary-wide logits keep no activations for a backward pass.
        """
        if not (self.cfg.freeze_encoder or self.cfg.freeze_pivot):
            return model(enc["input_ids"], enc["attention_mask"])
        student, mask = self.model, enc["attention_mask"]
        if self.cfg.freeze_encoder:
            student.m_model.eval()  # no dropout, so states are a function of the tokens
            with torch.no_grad():
                hidden = (self.cache.hidden(student, enc["input_ids"], mask) if self.cache
                          else student.encode_states(enc["input_ids"], mask))
            hidden = hidden.to(student.projector.weight.dtype)
        else:
            hidden = student.encode_states(enc["input_ids"], mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_pivot):
            pivot_logits = student.pivot_from_states(hidden, mask)
        return model_output(hidden, pivot_logits, student.echo_from_states(hidden, mask))

    def to(self, device: torch.device) -> None:
        self.model.to(device)
        if self.teacher is not None:
            self.teacher.to(device)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    save_model = staticmethod(save_model)
    load_model_weights = staticmethod(load_model_weights)


class EncoderStateCache:
    """Frozen-encoder states per token sequence, so repeated texts are encoded once.

    Used only with a frozen encoder run in eval mode, whose states are a pure function
    of the tokens. Stops adding entries after ``max_positions`` cached positions.
    """

    def __init__(self, max_positions: int) -> None:
        self.max_positions, self.positions = max_positions, 0
        self.states: dict[tuple[int, ...], Tensor] = {}
        self.hits = self.misses = 0

    def hidden(self, model: MilcoModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        keys = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(input_ids, attention_mask,
                                                                        strict=True)]
        missing = [i for i, k in enumerate(keys) if k not in self.states]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[int, Tensor] = {}
        if missing:
            with torch.no_grad():
                states = model.encode_states(input_ids[missing], attention_mask[missing])
            for row, i in enumerate(missing):
                fresh[i] = states[row, : len(keys[i])].float()
                if self.positions + len(keys[i]) <= self.max_positions:
                    self.states[keys[i]] = fresh[i]
                    self.positions += len(keys[i])
        out = input_ids.new_zeros((*input_ids.shape, model.m_model.config.hidden_size),
                                  dtype=torch.float32)
        for i, key in enumerate(keys):
            out[i, : len(key)] = fresh[i] if i in fresh else self.states[key]
        return out


class AlignmentStage(_StageBase):
    """Stage 1, Sparse Alignment Pretraining (see the module docstring)."""

    def __init__(self, cfg: TrainConfig) -> None:
        if not cfg.teacher:
            raise ConfigError("stage sap needs 'teacher': an English SPLADE folder")
        sources = cfg.data.get("parallel")
        if not sources:
            raise ConfigError("stage sap needs data.parallel: a list of parallel sources")
        self.cfg = cfg
        self.model = build_student(cfg)
        self.teacher = load_sparse_model(os.path.expanduser(cfg.teacher))
        freeze(self.teacher)
        self.teacher.eval()  # the released code left the teacher's dropout on
        for parameter in self.model.echo_parameters():
            parameter.requires_grad_(False)
        self.freeze_parts()
        # a text one source holds out for evaluation never enters through another source
        self.dataset, self.heldout_pairs_left_out = load_parallel_sources(sources)
        self.lengths = [len(r["english"]) + len(r["non_english"]) for r in self.dataset]
        self.collate = ParallelCollator(
            load_tokenizer(self.model.tokenizer_dirs["m"]),
            load_tokenizer(self.teacher.tokenizer_dirs["m"]),
            cfg.max_length, cfg.pad_to_multiple_of)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            teacher = self.teacher(**batch["teacher_english"]).pivot_logits.float()
        non_english = smse(self.student(model, batch["non_english"]).pivot_logits.float(),
                           teacher)
        english = smse(self.student(model, batch["english"]).pivot_logits.float(), teacher)
        loss = non_english + english
        return loss, {"loss": loss.item(), "smse_non_english": non_english.item(),
                      "smse_english": english.item()}


class ContrastiveStage(_StageBase):
    """Stage 2, Sparse Contrastive Training (see the module docstring)."""

    def __init__(self, cfg: TrainConfig) -> None:
        source = cfg.data.get("distillation")
        if not source:
            raise ConfigError("stage sct needs data.distillation: a dataset id or local file")
        self.cfg = cfg
        self.model = build_student(cfg)
        if cfg.echo and isinstance(self.model, MilcoModel):
            attach_fresh_echo(self.model)
        self.freeze_parts()
        self.regulariser = regulariser(cfg.sparse_reg)
        rows = load_rows(source, DISTILLATION_COLUMNS, split=cfg.data.get("split", "train"))
        self.dataset = DistillationGroups(rows, cfg.group_size, cfg.seed)
        queries = rows["query"] if hasattr(rows, "column_names") else [r["query"] for r in rows]
        self.lengths = [len(q) for q in queries]
        self.collate = GroupCollator(load_tokenizer(self.model.tokenizer_dirs["m"]),
                                     cfg.query_max_length, cfg.doc_max_length,
                                     cfg.pad_to_multiple_of)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        q_in, d_in = batch["queries"], batch["docs"]
        q, d = self.student(model, q_in), self.student(model, d_in)
        scores = score_matrix(q.pivot, d.pivot, q.echo, q_in["input_ids"], d.echo,
                              d_in["input_ids"])
        if self.cfg.loss == "kl":
            rank = kl_group_loss(group_scores(scores, self.cfg.group_size),
                                 batch["teacher_scores"])
        else:
            rank = info_nce_loss(scores, self.cfg.group_size)
        reg_q, reg_d = self.regulariser(q.pivot.float()), self.regulariser(d.pivot.float())
        loss = rank + self.cfg.lambda_q * reg_q + self.cfg.lambda_d * reg_d
        return loss, {"loss": loss.item(), self.cfg.loss: rank.item(), "reg_q": reg_q.item(),
                      "reg_d": reg_d.item()}


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


