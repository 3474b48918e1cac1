"""Build stage-2 distillation rows from a stage-1 config's parallel data.

Samples ``--rows`` parallel pairs (seeded) from the config's ``data.parallel`` sources
(so held-out lines stay held out), mines ``--negatives`` hard negatives per pair with
the config's English ``teacher`` among every English sentence of those sources, and
writes JSONL rows (query, pos, pos_scores, neg, neg_scores) for a stage-2 config's
``data.distillation``. See milco_os.training.mining.

    python training/mine_distillation.py --config training/configs/milco-small.yaml \\
        --rows 24000 --out runs/milco-small-distillation.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from milco_os.encoders import SparseEncoder  # noqa: E402
from milco_os.training.config import TrainConfig  # noqa: E402
from milco_os.training.data import load_parallel_sources  # noqa: E402
from milco_os.training.mining import mine_distillation_rows  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True,
                        help="a config with data.parallel and teacher (e.g. a stage-1 config)")
    parser.add_argument("--rows", type=int, default=24_000, help="pairs to sample")
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = TrainConfig.from_file(args.config)
    if not cfg.teacher or not cfg.data.get("parallel"):
        parser.error(f"{args.config} needs 'teacher' and 'data.parallel'")
    pairs, heldout = load_parallel_sources(cfg.data["parallel"])
    english = [p["english"] for p in pairs]
    sample = random.Random(args.seed).sample(pairs, min(args.rows, len(pairs)))
    print(f"{len(pairs)} pairs ({heldout} left out: held-out text), "
          f"{len(set(english))} distinct English sentences; "
          f"mining {args.negatives} negatives for {len(sample)} pairs", file=sys.stderr)
    teacher = SparseEncoder.from_pretrained(os.path.expanduser(cfg.teacher), device="cpu")
    rows = mine_distillation_rows(sample, teacher, args.negatives, pool=english, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
