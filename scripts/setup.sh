#!/usr/bin/env bash
# Create .venv and install the project with its test extras (idempotent: reinstalls only
# when pyproject.toml changed). Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.drm-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # torch's build on this index carries its CUDA libraries: the venv needs about 6.5 GB.
  need_kb=$((7 * 1024 * 1024))
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ -z "${DRM_SKIP_DISK_CHECK:-}" ] && [ -n "$free_kb" ] && [ "$free_kb" -lt "$need_kb" ] \
     && [ ! -d .venv/lib/python*/site-packages/torch ]; then
    echo "setup: the venv needs about 7 GB free (torch and its CUDA libraries), but only" \
         "$((free_kb / 1024)) MB are free on $(df -P . | awk 'NR==2 {print $6}')." \
         "Free some space (old clones, caches) and rerun; DRM_SKIP_DISK_CHECK=1 skips this check." >&2
    exit 1
  fi
  echo "setup: installing dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
# DVC must not phone home; tests point its site cache inside the project.
export DVC_NO_ANALYTICS=1
