#!/usr/bin/env bash
# End-to-end demo: a real local OpenSearch and a cross-lingual search through it.
set -euo pipefail
cd "$(dirname "$0")/.."
milco=.venv/bin/milco-os
url=$($milco cluster up --name demo 2>/dev/null || $milco cluster status --name demo --json \
      | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["url"])')
echo "OpenSearch at $url"
$milco cluster status --name demo
