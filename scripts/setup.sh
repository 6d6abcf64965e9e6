#!/usr/bin/env bash
# Create .venv and install the project with its test extras at the exact versions in
# requirements.lock, hashes checked (idempotent: reinstalls only when requirements.lock or
# pyproject.toml changed). Usage: scripts/setup.sh
#   DRM_UNPINNED=1 scripts/setup.sh   install from pyproject.toml's version ranges instead
#                                     (newest releases that fit: not reproducible)
# How the lock is made and updated: docs/environment.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=requirements.lock
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if [ -n "${DRM_UNPINNED:-}" ]; then mode=unpinned; else mode=locked; fi
stamp=.venv/.drm-installed
want="$mode $(cat pyproject.toml "$LOCK" | sha256sum | cut -d' ' -f1)"
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
  pyver=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  echo "setup: installing dependencies into .venv ($mode; first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  if [ "$mode" = unpinned ]; then
    .venv/bin/python -m pip install -q -e '.[test]'
  else
    if [ "$pyver" != 3.11 ]; then
      echo "setup: warning: $LOCK was resolved for Python 3.11, .venv has $pyver;" \
           "use PYTHON=python3.11 (and a new .venv) or DRM_UNPINNED=1 if the install fails." >&2
    fi
    .venv/bin/python -m pip install -q --require-hashes -r "$LOCK"
    # The project itself, without its dependencies (the lock holds them all) and with the
    # lock's setuptools as build backend.
    .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  fi
  echo "$want" > "$stamp"
fi
# DVC must not phone home; tests point its site cache inside the project.
export DVC_NO_ANALYTICS=1
