"""Training curves with dvclive, one directory per run, never touching dvc.yaml.

A resumed run (drm.finetune.checkpoint) continues its curves instead of restarting them: the
checkpoint stores `snapshot(directory)` (the curves as of its step) and `live_logger(directory,
resume=that)` puts them back, dropping any step logged after the checkpoint, and opens dvclive
with `resume=True`, which continues from the next step. (DVC deletes the curves, a plots output,
before it reruns a stage, so they come back from the checkpoint, not from the folder.)"""
from __future__ import annotations

import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

# the files dvclive writes that make up the curves: plots/metrics/**.tsv, metrics.json, params.yaml
_CURVE_SUFFIXES = (".tsv", ".json", ".yaml")


class _NullLive:
    def log_metric(self, *a, **k):
        pass

    def log_params(self, *a, **k):
        pass

    def next_step(self):
        pass


def snapshot(directory) -> dict[str, str]:
    """The dvclive folder's curve files, relative path -> text (empty if there are none)."""
    root = Path(directory)
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in _CURVE_SUFFIXES}


def restore(directory, files: dict[str, str]) -> None:
    """Make the dvclive folder hold exactly `files` (a snapshot)."""
    root = Path(directory)
    shutil.rmtree(root, ignore_errors=True)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@contextmanager
def live_logger(directory: str, resume: dict[str, str] | None = None):
    """dvclive.Live(dir=directory) with dvcyaml=False and no DVC experiment, so runs under
    `dvc repro` don't rewrite the pipeline; if dvclive can't start (e.g. a git repo without
    a commit) training goes on without curves, with a warning. `resume`: a `snapshot` to
    continue from (see the module docstring)."""
    if resume is not None:
        restore(directory, resume)
    try:
        from dvclive import Live

        live = Live(dir=directory, dvcyaml=False, save_dvc_exp=False, report=None, resume=resume is not None)
    except Exception as e:  # dvclive's own errors vary by scm state
        warnings.warn(f"dvclive could not start ({e}); no training curves in {directory}")
        # The curves folder is a DVC output: it must exist (empty) for the stage to complete.
        (Path(directory) / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
        yield _NullLive()
        return
    with live:
        yield live
