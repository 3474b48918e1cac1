"""The training loop shared by both stages: one process, torchrun, or DeepSpeed ZeRO.

A stage (see :mod:`milco_os.training.stages`) supplies the trainable model, the
dataset with its collator and lengths, the loss of one batch, and how to save and
load the model. The loop adds seeding, bf16 autocast, AdamW with warmup + cosine
decay, gradient accumulation, logging, and checkpoints that hold the model in the
released layout (loadable by ``milco-os encode``) plus a ``trainer_state`` folder
(optimizer, scheduler, data position, RNG states) from which ``--resume`` continues
the same run at the same step.

Under torchrun without DeepSpeed, gradients are all-reduced explicitly at each
accumulation boundary instead of wrapping the model in DDP: every stage runs several
forwards of the student per step (queries and documents, or two languages), which
DDP's reducer does not allow before one backward.

Run it through the scripts, e.g. ``python training/sap.py --config
training/configs/tiny.yaml max_steps=5``, or see :class:`Trainer` for the Python API.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from milco_os.models.base import SparseModel
from milco_os.training.config import ConfigError, TrainConfig
from milco_os.training.data import LengthGroupedBatches

STATE_DIR = "trainer_state"
DS_TAG = "deepspeed"


class Stage(Protocol):
    """What the loop needs from a training stage."""

    model: nn.Module
    dataset: Sequence[Any]
    collate: Callable[[list[Any]], Any]
    lengths: Sequence[int]

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]: ...

    def to(self, device: torch.device) -> None: ...

    def set_epoch(self, epoch: int) -> None: ...

    def save_model(self, model: nn.Module, directory: Path,
                   state_dict: dict[str, Tensor] | None = None) -> None: ...

    def load_model_weights(self, model: nn.Module, directory: Path) -> None: ...


@dataclass
class Position:
    """Where the run is: optimizer steps done, and the next micro-batch of which epoch."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


@dataclass
class TrainResult:
    """What a run did: its final position and the logged records."""

    position: Position
    history: list[dict[str, float]] = field(default_factory=list)
    last_checkpoint: Path | None = None


# ---------------------------------------------------------------- process setup


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(use_deepspeed: bool) -> Dist:
    """Join the process group that torchrun / deepspeed / srun described in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if use_deepspeed:
        import deepspeed

        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        deepspeed.init_distributed()
    elif world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        return Dist(dist.get_rank(), dist.get_world_size(), local)
    return Dist()


def device_for(d: Dist) -> torch.device:
    return torch.device("cuda", d.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def bf16_autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast where the device supports it; DeepSpeed's own bf16 mode casts itself."""
    supported = device.type == "cpu" or torch.cuda.is_bf16_supported()
    if cfg.bf16 and supported and not cfg.deepspeed:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------- optimisation


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: ``max_steps`` when set (epochs repeat as needed), else
    the full batches of ``epochs`` epochs."""
    if batches_per_epoch < 1:
        raise ValueError("not one full batch per process: the dataset is smaller than "
                         f"batch_size={cfg.batch_size} x processes")
    if cfg.max_steps is not None:
        return cfg.max_steps
    steps = batches_per_epoch // cfg.grad_accum * cfg.epochs
    if steps < 1:
        raise ValueError(f"{batches_per_epoch} batches per epoch per process is less than "
                         f"grad_accum={cfg.grad_accum}: too little data")
    return steps


def warmup_for(cfg: TrainConfig, steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * steps)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; with ``cfg.echo_lr`` the echo head and scale
    are a second group at that rate (the schedule scales both groups alike)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if cfg.echo_lr is None:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    echo = model.echo_parameters() if isinstance(model, SparseModel) else []
    echo_ids = {id(p) for p in echo if p.requires_grad}
    if not echo_ids:
        raise ConfigError("echo_lr is set but the model has no trainable echo head")
    groups = [{"params": [p for p in params if id(p) not in echo_ids], "lr": cfg.lr},
              {"params": [p for p in params if id(p) in echo_ids], "lr": cfg.echo_lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr,
                             weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, steps: int) -> Callable[[torch.optim.Optimizer], Any]:
    from transformers import get_cosine_schedule_with_warmup

    return lambda opt: get_cosine_schedule_with_warmup(opt, warmup_for(cfg, steps), steps)


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    """The JSON of ``cfg.deepspeed`` with batch size, accumulation, clipping and bf16
    taken from the training config, so the two never disagree."""
    ds = json.loads(Path(cfg.deepspeed).read_text(encoding="utf-8"))
    ds.pop("train_batch_size", None)
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["gradient_clipping"] = cfg.max_grad_norm
    ds.setdefault("bf16", {})["enabled"] = bool(cfg.bf16)
    ds.setdefault("steps_per_print", 10**9)  # the loop logs
    return ds


def all_reduce_gradients(params: list[nn.Parameter], world: int) -> None:
    """Average gradients over ranks in one flat buffer per dtype."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


# ---------------------------------------------------------------- the loop


class Trainer:
    """Runs one stage under ``cfg``; :meth:`train` returns the logged history.

    Example (one process, a few steps of the tiny alignment config)::

        from milco_os.models.base import SparseModel
from milco_os.training.config import ConfigError, TrainConfig
        from milco_os.training.build import build_stage
        cfg = TrainConfig.from_file("training/configs/tiny.yaml", ["max_steps=5"])
        Trainer(cfg, build_stage(cfg)).train()
    """

    def __init__(self, cfg: TrainConfig, stage: Stage) -> None:
        self.cfg, self.stage = cfg, stage
        self.dist = init_distributed(bool(cfg.deepspeed))
        self.device = device_for(self.dist)
        self.out = Path(cfg.output_dir)
        self.batches = LengthGroupedBatches(stage.lengths, cfg.batch_size, cfg.seed)
        self.per_epoch = len(stage.dataset) // cfg.batch_size // self.dist.world
        self.steps = total_steps(cfg, self.per_epoch)
        stage.to(self.device)
        self.engine: Any = None
        if cfg.deepspeed:
            self._init_deepspeed()
        else:
            self.optimizer = build_optimizer(cfg, stage.model)
            self.scheduler = build_scheduler(cfg, self.steps)(self.optimizer)

    def _init_deepspeed(self) -> None:
        import deepspeed

        ds = deepspeed_config(self.cfg)
        if "optimizer" in ds and self.cfg.echo_lr is not None:
            raise ConfigError("echo_lr needs the loop's optimizer: drop 'optimizer' from "
                              f"{self.cfg.deepspeed}")
        optimizer = None if "optimizer" in ds else build_optimizer(self.cfg, self.stage.model)
        params = [p for p in self.stage.model.parameters() if p.requires_grad]
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.stage.model, optimizer=optimizer, model_parameters=params,
            lr_scheduler=build_scheduler(self.cfg, self.steps), config=ds)

    # ---- data

    def _rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's share of the epoch's full batches (the same count on every rank)."""
        full = [b for b in self.batches.epoch(epoch) if len(b) == self.cfg.batch_size]
        return full[: self.per_epoch * self.dist.world][self.dist.rank :: self.dist.world]

    def _micro_batches(self, pos: Position) -> Iterator[tuple[int, int, Any]]:
        for epoch in itertools.count(pos.epoch):
            self.stage.set_epoch(epoch)
            batches = self._rank_batches(epoch)
            start = pos.batch if epoch == pos.epoch else 0
            for index in range(start, len(batches)):
                rows = [self.stage.dataset[i] for i in batches[index]]
                yield epoch, index, to_device(self.stage.collate(rows), self.device)

    # ---- steps

    def _backward(self, loss: Tensor) -> None:
        if self.engine is not None:
            self.engine.backward(loss)
        else:
            (loss / self.cfg.grad_accum).backward()

    def _optimizer_step(self) -> None:
        params = [p for p in self.stage.model.parameters() if p.requires_grad]
        if self.dist.world > 1:
            all_reduce_gradients(params, self.dist.world)
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train(self, resume: str | Path | None = None) -> TrainResult:
        """Train to the configured number of steps, from ``resume`` when given."""
        seed_everything(self.cfg.seed)
        pos = self.load_checkpoint(Path(resume)) if resume else Position()
        result = TrainResult(pos)
        model = self.engine if self.engine is not None else self.stage.model
        model.train()
        sums: dict[str, float] = {}
        micro, started = 0, time.monotonic()
        for epoch, index, batch in self._micro_batches(pos):
            if pos.step >= self.steps:
                break
            with bf16_autocast(self.cfg, self.device):
                loss, metrics = self.stage.loss(model, batch)
            self._backward(loss)
            if self.engine is not None:
                self.engine.step()  # DeepSpeed counts micro-batches and steps at the boundary
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value / self.cfg.grad_accum
            micro += 1
            if micro % self.cfg.grad_accum:
                continue
            if self.engine is None:
                self._optimizer_step()
            pos = Position(pos.step + 1, epoch, index + 1)
            result.history.append(self._log(pos, sums))
            sums = {}
            if self.cfg.save_every and pos.step % self.cfg.save_every == 0:
                result.last_checkpoint = self.save_checkpoint(pos)
            if self._out_of_time(started):
                break
        if result.last_checkpoint != self.out / f"checkpoint-{pos.step}":
            result.last_checkpoint = self.save_checkpoint(pos)
        result.position = pos
        return result

    def _out_of_time(self, started: float) -> bool:
        """Whether ``max_minutes`` is spent, decided by rank 0 so every rank stops together."""
        if self.cfg.max_minutes is None:
            return False
        flag = torch.tensor([time.monotonic() - started > 60 * self.cfg.max_minutes],
                            dtype=torch.int32, device=self.device)
        if self.dist.world > 1:
            dist.broadcast(flag, src=0)
        return bool(flag.item())

    def _log(self, pos: Position, sums: dict[str, float]) -> dict[str, float]:
        record = {"step": pos.step, "epoch": pos.epoch, "lr": self.scheduler.get_last_lr()[0],
                  **self._mean_over_ranks(sums)}
        if self.dist.is_main and (pos.step % self.cfg.log_every == 0 or pos.step == 1
                                  or pos.step == self.steps):
            self.out.mkdir(parents=True, exist_ok=True)
            line = json.dumps({k: round(v, 6) if isinstance(v, float) else v
                               for k, v in record.items()})
            print(line, flush=True)
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as log:
                log.write(line + "\n")
        return record

    def _mean_over_ranks(self, sums: dict[str, float]) -> dict[str, float]:
        if self.dist.world == 1 or not sums:
            return sums
        keys = sorted(sums)
        values = torch.tensor([sums[k] for k in keys], device=self.device, dtype=torch.float64)
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.dist.world).tolist(), strict=True))

    # ---- checkpoints

    def save_checkpoint(self, pos: Position) -> Path:
        """``checkpoint-<step>/``: the model in the released layout + ``trainer_state/``."""
        directory = self.out / f"checkpoint-{pos.step}"
        state_dir = directory / STATE_DIR
        meta = {"position": vars(pos), "config": self.cfg.to_dict(), "world": self.dist.world}
        if self.engine is not None:
            self.engine.save_checkpoint(str(state_dir), tag=DS_TAG, client_state=meta)
            if self.dist.is_main:
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                fp32 = get_fp32_state_dict_from_zero_checkpoint(str(state_dir), tag=DS_TAG)
                self.stage.save_model(self.stage.model, directory, state_dict=fp32)
        elif self.dist.is_main:
            state_dir.mkdir(parents=True, exist_ok=True)
            self.stage.save_model(self.stage.model, directory)
            torch.save({"optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict()}, state_dir / "optimizer.pt")
        if self.dist.world > 1:
            dist.barrier()
        state_dir.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), state_dir / f"rng-{self.dist.rank}.pt")
        if self.dist.is_main:
            (state_dir / "state.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
            self._prune_checkpoints()
        if self.dist.world > 1:
            dist.barrier()
        return directory

    def _prune_checkpoints(self) -> None:
        if not self.cfg.save_total_limit:
            return
        found = sorted(self.out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        for old in found[: -self.cfg.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, directory: Path) -> Position:
        """Restore model, optimizer, scheduler and RNG from ``directory``; return its position."""
        if directory.name == "latest":
            directory = latest_checkpoint(directory.parent)
        state_dir = directory / STATE_DIR
        meta = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
        if meta["world"] != self.dist.world:
            raise ValueError(f"{directory} was written by {meta['world']} processes; resuming "
                             f"with {self.dist.world} would change the data order")
        if self.engine is not None:
            self.engine.load_checkpoint(str(state_dir), tag=DS_TAG)
        else:
            self.stage.load_model_weights(self.stage.model, directory)
            saved = torch.load(state_dir / "optimizer.pt", map_location=self.device,
                               weights_only=False)
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(torch.load(state_dir / f"rng-{self.dist.rank}.pt", weights_only=False))
        return Position(**meta["position"])


def latest_checkpoint(output_dir: Path) -> Path:
    found = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not found:
        raise FileNotFoundError(f"no checkpoint-* folder in {output_dir} to resume from")
    return found[-1]


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
