"""Training curves with dvclive, one directory per run, never touching dvc.yaml."""
from __future__ import annotations

import warnings
from contextlib import contextmanager


class _NullLive:
    def log_metric(self, *a, **k):
        pass

    def log_params(self, *a, **k):
        pass

    def next_step(self):
        pass


@contextmanager
def live_logger(directory: str):
    """dvclive.Live(dir=directory) with dvcyaml=False and no DVC experiment, so runs under
    `dvc repro` don't rewrite the pipeline; if dvclive can't start (e.g. a git repo without
    a commit) training goes on without curves, with a warning."""
    try:
        from dvclive import Live

        live = Live(dir=directory, dvcyaml=False, save_dvc_exp=False, report=None)
    except Exception as e:  # dvclive's own errors vary by scm state
        warnings.warn(f"dvclive could not start ({e}); no training curves in {directory}")
        yield _NullLive()
        return
    with live:
        yield live
