#!/usr/bin/env bash
# Set up, then run the test suite. Usage: scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export DVC_NO_ANALYTICS=1 DRM_NO_PROGRESS=1
exec .venv/bin/python -m pytest "$@"
