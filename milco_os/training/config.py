"""Training configuration: a YAML file plus ``key=value`` overrides from the command line.

>>> values = {"stage": "sap", "output_dir": "runs/x"}
>>> cfg = TrainConfig.from_dict(values, ["lr=1e-4", "model.preset=tiny"])
>>> cfg.lr, cfg.model["preset"]
(0.0001, 'tiny')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STAGES = ("sap", "sct")
LOSSES = ("kl", "info_nce")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid."""


@dataclass
class TrainConfig:
    """Every knob of a training run; the YAML keys are these field names.

    ``model`` says where the student comes from: ``{preset: tiny}``,
    ``{path: <MILCO folder>}`` or ``{encoder: <multilingual encoder>, head: <SPLADE>}``.
    ``data`` holds ``parallel`` (a list of sources, stage 1) or ``distillation``
    (a source, stage 2); see :func:`milco_os.training.data.load_parallel_source`.
    """

    stage: str
    output_dir: str
    model: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    # batching
    batch_size: int = 64
    grad_accum: int = 1
    max_length: int = 256
    query_max_length: int = 64
    doc_max_length: int = 256
    group_size: int = 8
    pad_to_multiple_of: int | None = None
    # optimisation
    lr: float = 2e-5
    # a fresh echo head next to a pretrained pivot view wants a higher rate than it (stage 2)
    echo_lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int | None = None
    warmup_ratio: float = 0.0
    epochs: int = 1
    max_steps: int | None = None
    max_grad_norm: float = 1.0
    bf16: bool = True
    deepspeed: str | None = None
    # stage 2 loss
    loss: str = "kl"
    lambda_q: float = 1e-3
    lambda_d: float = 1e-5
    sparse_reg: str = "l1"
    echo: bool = True
    # small-compute recipes: a frozen encoder (its states cached) and, in stage 2, a frozen
    # pivot view (connector + English head), so only what is left trains
    freeze_encoder: bool = False
    freeze_pivot: bool = False
    cache_encoder_states: bool = False
    cache_max_positions: int = 2_000_000
    # bookkeeping
    max_minutes: float | None = None  # stop (and save) after this much training time
    log_every: int = 10
    save_every: int | None = None
    save_total_limit: int | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
        values = dict(values)
        for item in overrides or []:
            apply_override(values, item)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known: {sorted(known)}")
        missing = [k for k in ("stage", "output_dir") if k not in values]
        if missing:
            raise ConfigError(f"config is missing {missing}")
        cfg = cls(**_coerce_floats(cls, values))
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(values, overrides)

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("batch_size", "grad_accum", "epochs", "group_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cache_encoder_states and not self.freeze_encoder:
            raise ConfigError("cache_encoder_states needs freeze_encoder: true "
                              "(a trained encoder's states change every step)")
        if self.stage == "sap" and self.freeze_encoder and self.freeze_pivot:
            raise ConfigError("freeze_encoder and freeze_pivot together leave nothing to train "
                              "in stage sap (its echo head does not train)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce_floats(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """YAML reads ``2e-5`` (no dot) as text; float fields take it as the number it is."""
    float_fields = {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("float")}
    coerced = dict(values)
    for name in float_fields & set(values):
        if isinstance(values[name], str):
            try:
                coerced[name] = float(values[name])
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {values[name]!r}") from None
    return coerced


def apply_override(values: dict[str, Any], item: str) -> None:
    """Apply ``a.b=value`` (value parsed as YAML) to nested ``values`` in place."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    *parents, leaf = key.split(".")
    target = values
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
    target[leaf] = yaml.safe_load(raw)
