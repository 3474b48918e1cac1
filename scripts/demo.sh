#!/usr/bin/env bash
# End-to-end demo: a real local OpenSearch, a model, the shipped multilingual
# sample corpus ingested, and cross-lingual searches with explanations.
set -euo pipefail
cd "$(dirname "$0")/.."
milco=.venv/bin/milco-os
models="${MILCO_OS_HOME:-$HOME/.cache/milco-os}/models"

url=$($milco cluster status --name demo --json 2>/dev/null \
      | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["url"])' \
      || $milco cluster up --name demo)
export MILCO_OS_URL="$url"
echo "OpenSearch at $MILCO_OS_URL"

# Prefer a trained small MILCO (training/README.md), else a random tiny one.
model="$models/milco-small"
if [ ! -f "$model/config.json" ]; then
  model="$models/tiny"
  [ -f "$model/config.json" ] || $milco model init --preset tiny --out "$model"
  echo "note: $model is randomly initialised: the flow is real, the rankings are not."
fi

$milco ingest --index sample-multilingual --model "$model" --prune topk:128 --quiet
$milco index info sample-multilingual
for q in "Welsh Parliament name change" "Walisisches Parlament Namensänderung" "威尔士议会"; do
  $milco search --index sample-multilingual --model "$model" --k 3 --query-prune topk:100 --explain "$q"
done
echo "stop the cluster with: $milco cluster down --name demo"
