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


def relaunch(nproc_per_node: int, script, argv=None) -> bool:
    """When runtime.nproc_per_node > 1 and this process is not already a worker: run this
    stage's command line as that many workers under torch's elastic agent (the single-node
    `torchrun`, drm.base.distributed.launch_workers), wait for them, and return True (the
    caller then stops: the workers did the work). Otherwise False: run here."""
    from drm.base.distributed import launch_workers, launched_by_agent

    if nproc_per_node <= 1 or launched_by_agent():
        return False
    launch_workers(nproc_per_node, [str(Path(script).resolve()), *(sys.argv[1:] if argv is None else argv)])
    return True


def message(e: DRMError) -> str:
    """The user's message of a DRMError. One raised in a DataLoader worker comes back wrapped
    in "Caught DRMError in DataLoader worker process N. Original Traceback ...": keep only the
    original message (the traceback is no use to a user; the message names the file)."""
    text = str(e)
    if "Original Traceback" in text:
        name = type(e).__name__
        tail = text.rsplit(f"{name}: ", 1)
        if len(tail) == 2:
            return tail[1].strip()
    return text


def run(main) -> None:
    try:
        name, summary = main()
        if summary is not None:
            print(f"{name}: {json.dumps(summary) if not isinstance(summary, str) else summary}")
        if "torch.distributed" in sys.modules:  # a worker of a distributed stage: leave the group cleanly
            from drm.base.distributed import shutdown

            shutdown()
    except DRMError as e:
        print(f"error: {message(e)}", file=sys.stderr)
        sys.exit(2)
