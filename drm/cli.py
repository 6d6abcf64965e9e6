"""Shared plumbing for the stage scripts: arguments, params loading, user-facing errors."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from drm.errors import DRMError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def progress_enabled(args) -> bool:
    return not args.no_progress and os.environ.get("DRM_NO_PROGRESS", "") != "1"


def load(args):
    """(validated Params, project folder) for a stage script's arguments."""
    from drm.config import load_params

    return load_params(args.params), Path(args.params).resolve().parent


def run(main) -> None:
    """Run a stage's main(); a DRMError becomes one clear line on stderr and exit code 2."""
    try:
        name, summary = main()
        if summary is not None:
            print(f"{name}: {json.dumps(summary) if not isinstance(summary, str) else summary}")
    except DRMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
