"""The stage a training config names: MILCO's two stages, or SCT with an echo-LLM student.

Kept apart from :mod:`milco_os.training.stages` so that module and
:mod:`milco_os.training.echo_llm`, which builds on it, do not import each other.
"""

from __future__ import annotations

import torch

from milco_os.training.config import TrainConfig
from milco_os.training.echo_llm import EchoLlmContrastiveStage, is_echo_llm_spec
from milco_os.training.stages import AlignmentStage, ContrastiveStage


def build_stage(cfg: TrainConfig) -> AlignmentStage | ContrastiveStage:
    """The stage ``cfg.stage`` names, with its model, data and loss."""
    torch.manual_seed(cfg.seed)  # fresh parts (connector, echo head) start the same every run
    if cfg.stage == "sct" and is_echo_llm_spec(cfg):
        return EchoLlmContrastiveStage(cfg)
    return AlignmentStage(cfg) if cfg.stage == "sap" else ContrastiveStage(cfg)
