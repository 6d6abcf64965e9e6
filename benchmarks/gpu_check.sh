#!/usr/bin/env bash
# The prepared GPU check (docs/scale.md): ViT-B-16, random weights (no download), 224 px, bf16:
# zeroshot over 10k synthetic images, then erm, drm, flyp and drm_flyp for 3 epochs of 78 steps
# of 128 images each; prints images/s and peak GPU memory, in well under 10 minutes on one
# recent GPU. Usage: benchmarks/gpu_check.sh [extra benchmarks/gpu_check.py arguments]
# (e.g. --json gpu_check.json). Needs the project's environment (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: no CUDA device visible to torch")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" benchmarks/gpu_check.py "$@"
