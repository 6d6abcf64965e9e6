#!/usr/bin/env bash
# Set up, then run the whole pipeline on the embedded default world with DVC.
# Usage: scripts/run.sh [extra dvc repro arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source .venv/bin/activate
export DVC_NO_ANALYTICS=1
if [ ! -d .git ]; then
  echo "run: DVC needs a git repository: run this from a clone of the project" >&2
  exit 2
fi
start=$(date +%s)
dvc repro "$@"
echo "run: pipeline finished in $(( $(date +%s) - start )) s"
echo "run: report at reports/report.md (plot: reports/id_vs_ood.png); metrics: dvc metrics show"
