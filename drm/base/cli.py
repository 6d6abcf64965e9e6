"""Shared plumbing for the stage scripts: arguments, params loading, user-facing errors.

A stage script defines `main(argv=None) -> (name, summary)`; `run(main)` makes a DRMError one
clear line on stderr and exit code 2. The Prefect flow calls the same `main` in-process."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from drm.base.errors import DRMError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def load(args, schema):
    """(validated stage params, project folder, whether to show progress) for a stage's arguments;
    paths in params are relative to the params file's folder."""
    from drm.base.params import load as load_params

    params = load_params(args.params, schema)
    progress = (params.runtime.progress and not args.no_progress
                and os.environ.get("DRM_NO_PROGRESS", "") != "1")
    return params, Path(args.params).resolve().parent, progress


def run(main) -> None:
    try:
        name, summary = main()
        if summary is not None:
            print(f"{name}: {json.dumps(summary) if not isinstance(summary, str) else summary}")
    except DRMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
