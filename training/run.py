"""Command line of the training scripts: ``--config``, ``--resume``, ``--deepspeed``, overrides.

Shared by ``training/sap.py`` and ``training/sct.py``; the ``deepspeed`` launcher's
``--local_rank`` argument is accepted and ignored (``LOCAL_RANK`` is read instead).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from milco_os.training.build import build_stage  # noqa: E402
from milco_os.training.config import TrainConfig  # noqa: E402
from milco_os.training.trainer import Trainer, TrainResult  # noqa: E402


def main(stage: str, argv: list[str] | None = None) -> TrainResult:
    parser = argparse.ArgumentParser(description=f"MILCO training, stage {stage}")
    parser.add_argument("--config", required=True, help="YAML config (training/configs/)")
    parser.add_argument("--resume", help="checkpoint folder, or <output_dir>/latest")
    parser.add_argument("--deepspeed", help="DeepSpeed JSON (training/ds/); overrides config")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=100")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    overrides = [f"stage={stage}", *args.overrides]
    if args.deepspeed:
        overrides.append(f"deepspeed={args.deepspeed}")
    cfg = TrainConfig.from_file(args.config, overrides)
    return Trainer(cfg, build_stage(cfg)).train(resume=args.resume)
