"""The pipeline as a Prefect flow that follows dvc.yaml: the same stages, paths, params and
code, read through DVC's own API, each run as a Prefect task by calling its stage script's
`main` in-process (no subprocess, no second declaration of the graph).

    python -m pipeline.flow                      # run once (a temporary local Prefect server)
    python -m pipeline.flow --serve --cron "0 3 * * *"   # on a schedule: needs a Prefect server

Caching: a task's key is what DVC would compare for that stage: its command, the values of
the params it lists and the content hash of every dependency (code folders, data, upstream
outputs), computed by DVC (`Dependency.get_hash`, with DVC's state cache so an unchanged large
folder is not re-read). A rerun with nothing changed runs nothing; a changed image, param or
source file reruns that stage and whatever its outputs feed. A stage whose outputs are missing
reruns even on a cache hit. Results are persisted under PREFECT_HOME.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from drm.base.errors import ConfigError, DRMError


@dataclass(frozen=True)
class Stage:
    """One resolved dvc.yaml stage (matrix entries expanded: finetune@drm-0)."""

    name: str
    script: str  # stages/<name>.py
    argv: tuple[str, ...]  # its arguments, from the stage's cmd
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    upstream: tuple[str, ...]  # names of the stages whose outputs it reads


_lock = threading.Lock()  # DVC's repo object and state database are not thread-safe


@functools.lru_cache(maxsize=8)
def _repo(project: str):
    from dvc.repo import Repo

    return Repo(project)


def load_stages(project: str) -> list[Stage]:
    """dvc.yaml's stages in dependency order, as DVC resolves them (vars, params, matrix)."""
    import networkx as nx

    with _lock:
        repo = _repo(project)
        graph = repo.index.graph
        order = list(nx.topological_sort(graph.reverse()))
        out = []
        for s in order:
            cmd = shlex.split(s.cmd if isinstance(s.cmd, str) else " ".join(s.cmd))
            if len(cmd) < 2 or cmd[0] != "python" or not cmd[1].startswith("stages/"):
                raise ConfigError(f"dvc.yaml stage {s.name!r}: the flow runs `python stages/<x>.py ...` "
                                  f"commands in-process; got {s.cmd!r}")
            out.append(Stage(name=s.name, script=cmd[1], argv=tuple(cmd[2:]),
                             deps=tuple(d.def_path for d in s.deps if not _is_params(d)),
                             outs=tuple(o.def_path for o in s.outs),
                             upstream=tuple(u.name for u in graph.successors(s))))
        return out


def _is_params(dep) -> bool:
    return type(dep).__name__ == "ParamsDependency"


def stage_key(project: str, name: str) -> str:
    """What DVC compares to decide whether a stage changed: cmd, params values, dep hashes."""
    with _lock:
        repo = _repo(project)
        repo.index  # noqa: B018 (resolved once per repo object)
        stage = next(s for s in repo.index.stages if s.name == name)
        h = hashlib.sha256(str(stage.cmd).encode())
        for dep in stage.deps:
            if _is_params(dep):
                h.update(json.dumps(dep.read_params(), sort_keys=True, default=str).encode())
            else:
                hashed = dep.get_hash() if dep.exists else None
                h.update(f"{dep.def_path}={hashed.value if hashed else '<missing>'}".encode())
        return h.hexdigest()


def _cache_key(context, parameters) -> str:
    # Runs when the task starts, after its upstream tasks finished: their outputs are hashed.
    return stage_key(parameters["project"], parameters["name"])


def retry_unless_user_error(task, task_run, state) -> bool:
    """Prefect's retry condition: retry transient failures (network, I/O, a crashed worker);
    a DRMError (bad params, missing data or API key) is the user's to fix, so fail at once."""
    exc = state.data
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:
            return True
    return not isinstance(exc, DRMError)


def run_stage_script(project: str, stage: Stage) -> dict:
    """Call the stage script's main() with its dvc.yaml arguments, as `dvc repro` would run it."""
    spec = importlib.util.spec_from_file_location(f"drm_stage_{Path(stage.script).stem}", Path(project) / stage.script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [*stage.argv, "--params", str(Path(project) / "params.yaml"), "--no-progress"]
    _, summary = module.main(argv)
    return summary if isinstance(summary, dict) else {"summary": summary}


@task(cache_key_fn=_cache_key, persist_result=True, retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_unless_user_error, task_run_name="{name}")
def run_stage(project: str, name: str, stage: Stage) -> dict:
    log = get_run_logger()
    log.info("%s reads %s", name, ", ".join(stage.deps))
    t0 = time.time()
    summary = run_stage_script(project, stage)
    log.info("%s wrote %s in %.1f s", name, ", ".join(stage.outs), time.time() - t0)
    return {"stage": name, "seconds": round(time.time() - t0, 1), "summary": summary}


def _outputs_missing(project: str, stage: Stage) -> bool:
    return not all((Path(project) / o).exists() for o in stage.outs)


# One stage at a time: stages share the process (torch threads, global RNG state).
@flow(name="drm-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1))
def drm_pipeline(project: str = ".") -> dict:
    """Every dvc.yaml stage as a task, each submitted once its upstream stages are done."""
    from drm.params import load_params

    project = str(Path(project).resolve())
    load_params(Path(project) / "params.yaml")  # every section valid before any task runs
    futures = {}
    for stage in load_stages(project):
        # A cache hit returns the stored summary without running: only valid if the files are there.
        runner = run_stage.with_options(refresh_cache=True) if _outputs_missing(project, stage) else run_stage
        futures[stage.name] = runner.submit(project=project, name=stage.name, stage=stage,
                                            wait_for=[futures[u] for u in stage.upstream])
    return {name: f.result() for name, f in futures.items()}


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def serve(project: str, cron: str) -> None:
    """Serve the flow on a schedule. Prefect's temporary server cannot schedule runs, so refuse it."""
    if not _api_url():
        raise ConfigError("scheduled runs need a Prefect server (the temporary one Prefect starts by itself "
                          "never schedules anything): start one with `prefect server start` in another "
                          "terminal, then set PREFECT_API_URL=http://127.0.0.1:4200/api and rerun")
    drm_pipeline.serve(name="drm-scheduled", cron=cron, parameters={"project": str(Path(project).resolve())})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", default=".", help="the project folder (dvc.yaml, params.yaml, stages/)")
    ap.add_argument("--serve", action="store_true", help="serve the flow on a schedule (long-running)")
    ap.add_argument("--cron", default="0 3 * * *", help="schedule for --serve (default: daily 03:00)")
    args = ap.parse_args(argv)
    try:
        if args.serve:
            serve(args.project, args.cron)
        else:
            print(json.dumps(drm_pipeline(args.project), indent=2, default=str))
    except DRMError as e:  # the task's failure is in Prefect's log; the fix, on one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
