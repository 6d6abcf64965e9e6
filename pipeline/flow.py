"""The pipeline as a Prefect flow that follows dvc.yaml: the same stages, paths, params and
code, read through DVC's own API, each run as a Prefect task by calling its stage script's
`main` (no second declaration of the graph).

    python -m pipeline.flow                                  # run once (a temporary local Prefect server)
    python -m pipeline.flow --runner process --workers 2     # fine-tuning runs two at a time
    python -m pipeline.flow --runner process --devices cuda:0,cuda:1   # one run per GPU
    python -m pipeline.flow --runner dask --dask-address tcp://scheduler:8786 --dask-resources GPU=1
    python -m pipeline.flow --serve --cron "0 3 * * *"       # on a schedule: needs a Prefect server

docs/orchestration.md has the server, the deployment in prefect.yaml, workers, clusters and
DVC remotes.

Runners. Every stage but `finetune` runs in the flow's process, one at a time, in dependency
order (they share torch threads and the global RNG state). The `finetune@<method>-<seed>` tasks
go to the runner: `sequential` (in-process, one at a time: the default), `process` (Prefect's
ProcessPoolTaskRunner: one process per run, `--workers` at once) or `dask` (prefect-dask's
DaskTaskRunner: a temporary LocalCluster of `--workers` single-threaded worker processes, or the
cluster at `--dask-address`). With `--devices`, each concurrent run gets one device of the list
(DRM_DEVICE, which overrides `runtime.device`), a device being given back when its run ends, so
no two runs share one. With `--dask-resources GPU=1`, each fine-tuning task asks Dask for those
worker resources (workers started with `--resources GPU=1`). A failed run fails alone: the other
runs finish, the stages downstream of it are not run, and the flow ends failed naming it.

Caching: a task's key is what DVC would compare for that stage: its command, the values of
the params it lists and the content hash of every dependency (code folders, data, upstream
outputs), computed by DVC (`Dependency.get_hash`; DVC's state database remembers each file's
hash by inode, mtime and size, so only new or changed files of a large folder are read again).
The flow computes it when the stage's upstream stages are done, just before it runs. A rerun
with nothing changed runs nothing; a changed or added image, param or source file reruns that
stage and whatever its outputs feed. A stage whose outputs are missing reruns even on a cache
hit. Results are persisted under PREFECT_HOME (PREFECT_LOCAL_STORAGE_PATH).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import queue
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from drm.base.errors import ConfigError, DRMError

RUNNERS = ("sequential", "process", "dask")
CONCURRENT = ("finetune",)  # the dvc.yaml stages whose matrix entries run concurrently
PIPELINE_FILE = "dvc.yaml"  # the pipeline `dvc repro` runs (with the upstream stages of other files)


@dataclass(frozen=True)
class Stage:
    """One resolved dvc.yaml stage (matrix entries expanded: finetune@drm-0)."""

    name: str
    script: str  # stages/<name>.py
    argv: tuple[str, ...]  # its arguments, from the stage's cmd
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    upstream: tuple[str, ...]  # names of the stages whose outputs it reads

    @property
    def concurrent(self) -> bool:
        return self.name.split("@")[0] in CONCURRENT


_lock = threading.Lock()  # DVC's repo object and state database are not thread-safe


@functools.lru_cache(maxsize=8)
def _repo(project: str):
    from dvc.repo import Repo

    return Repo(project)


def load_stages(project: str) -> list[Stage]:
    """The stages `dvc repro` runs, in dependency order, as DVC resolves them (vars, params,
    matrix): every stage of the project's dvc.yaml and the stages of other dvc.yaml files
    (embedded/dvc.yaml) whose outputs those read. So the embedded world and pre-training run
    only when data.root / model.weights are their outputs, as under `dvc repro`."""
    import networkx as nx

    with _lock:
        repo = _repo(project)
        graph = repo.index.graph
        root = [s for s in graph
                if os.path.normpath(os.path.relpath(s.dvcfile.path, repo.root_dir)) == PIPELINE_FILE]
        wanted = set(root)
        for s in root:  # edges point from a stage to the stages it depends on
            wanted |= nx.descendants(graph, s)
        order = [s for s in nx.topological_sort(graph.reverse()) if s in wanted]
        out = []
        for s in order:
            cmd = shlex.split(s.cmd if isinstance(s.cmd, str) else " ".join(s.cmd))
            if len(cmd) < 2 or cmd[0] != "python" or not cmd[1].startswith("stages/"):
                raise ConfigError(f"dvc.yaml stage {s.name!r}: the flow runs `python stages/<x>.py ...` "
                                  f"commands in-process; got {s.cmd!r}")
            out.append(Stage(name=s.name, script=cmd[1], argv=tuple(cmd[2:]),
                             deps=tuple(d.def_path for d in s.deps if not _is_params(d)),
                             outs=tuple(o.def_path for o in s.outs),
                             upstream=tuple(u.name for u in graph.successors(s) if u in wanted)))
        return out


def _is_params(dep) -> bool:
    return type(dep).__name__ == "ParamsDependency"


def stage_fingerprint(project: str, name: str) -> tuple[str, dict[str, str]]:
    """What DVC compares to decide whether a stage changed (cmd, params values, dep hashes),
    as (the cache key, {dependency: its DVC hash})."""
    with _lock:
        repo = _repo(project)
        repo.index  # noqa: B018 (resolved once per repo object)
        stage = next(s for s in repo.index.stages if s.name == name)
        h = hashlib.sha256(str(stage.cmd).encode())
        hashes = {}
        for dep in stage.deps:
            if _is_params(dep):
                h.update(json.dumps(dep.read_params(), sort_keys=True, default=str).encode())
            else:
                hashed = dep.get_hash() if dep.exists else None
                hashes[dep.def_path] = hashed.value if hashed else "<missing>"
                h.update(f"{dep.def_path}={hashes[dep.def_path]}".encode())
        return h.hexdigest(), hashes


def stage_key(project: str, name: str) -> str:
    """The cache key of a stage: see stage_fingerprint."""
    return stage_fingerprint(project, name)[0]


def _cache_key(context, parameters) -> str:
    # The flow passes the key it computed once the upstream stages were done (so a worker on
    # another process or machine needs no DVC state); computed here when called without one.
    return parameters.get("key") or stage_key(parameters["project"], parameters["name"])


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


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


@contextlib.contextmanager
def _device_env(device: str | None):
    """DRM_DEVICE=device while the stage runs (drm.base.params: it overrides runtime.device)."""
    if device is None:
        yield
        return
    before = os.environ.get("DRM_DEVICE")
    os.environ["DRM_DEVICE"] = device
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DRM_DEVICE", None)
        else:
            os.environ["DRM_DEVICE"] = before


@task(cache_key_fn=_cache_key, persist_result=True, retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_unless_user_error, task_run_name="{name}")
def run_stage(project: str, name: str, stage: Stage, key: str | None = None,
              inputs: dict[str, str] | None = None, device: str | None = None,
              threads: int | None = None) -> dict:
    """One dvc.yaml stage. Logs what it reads (each dependency with its DVC hash), what it
    writes (each output with its size) and how long it took; returns that, with where it ran.
    `threads`: torch's thread count to start from (the flow process's, for a run in a worker
    process, so that its floating-point results are the bytes a sequential run gives: Dask
    workers default to one thread; `runtime.threads`, when set, still wins)."""
    log = get_run_logger()
    if threads:
        import torch

        torch.set_num_threads(threads)
    where = f"{socket.gethostname()} pid {os.getpid()}" + (f" on {device}" if device else "")
    read = inputs or {d: "" for d in stage.deps}
    log.info("%s (%s) reads %s", name, where,
             ", ".join(f"{d} ({h[:12]})" if h else d for d, h in read.items()))
    started = time.time()
    with _device_env(device):
        summary = run_stage_script(project, stage)
    ended = time.time()
    wrote = {o: _size(Path(project) / o) for o in stage.outs}
    log.info("%s wrote %s in %.1f s", name, ", ".join(f"{o} ({n} bytes)" for o, n in wrote.items()),
             ended - started)
    return {"stage": name, "seconds": round(ended - started, 1), "started": started, "ended": ended,
            "host": socket.gethostname(), "pid": os.getpid(), "device": device, "read": read,
            "wrote": wrote, "summary": summary}


def _outputs_missing(project: str, stage: Stage) -> bool:
    return not all((Path(project) / o).exists() for o in stage.outs)


class PipelineFailed(RuntimeError):
    """Some stages failed: names each with its error, and the stages left unrun because of them."""

    def __init__(self, failed: dict[str, BaseException | str], skipped: list[str], completed: list[str]):
        self.failed, self.skipped, self.completed = failed, skipped, completed
        parts = [f"stage {n} failed: {_describe_error(e)}" for n, e in failed.items()]
        if skipped:
            parts.append(f"not run (an upstream stage failed): {', '.join(skipped)}")
        super().__init__("; ".join(parts))

    @property
    def user_error(self) -> bool:
        """Every failure is a DRMError (bad params, missing data or key): the user's to fix."""
        return all(isinstance(e, DRMError) for e in self.failed.values())


def _describe_error(e) -> str:
    if isinstance(e, DRMError):
        return " ".join(str(e).split())
    if isinstance(e, BaseException):
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    return str(e)


def _parse_devices(devices) -> list[str] | None:
    if not devices:
        return None
    items = [d.strip() for d in (devices.split(",") if isinstance(devices, str) else devices)]
    items = [d for d in items if d]
    if len(set(items)) != len(items):
        raise ConfigError(f"devices {items}: each device may appear once (one run per device)")
    return items or None


def _parse_resources(resources) -> dict[str, float] | None:
    if not resources:
        return None
    if isinstance(resources, dict):
        return {str(k): float(v) for k, v in resources.items()}
    out = {}
    for item in resources.split(","):
        name, sep, amount = item.partition("=")
        try:
            out[name.strip()] = float(amount) if sep else 1.0
        except ValueError:
            raise ConfigError(f"dask resources {resources!r}: expected NAME=AMOUNT[,NAME=AMOUNT], e.g. GPU=1") from None
    return out


@contextlib.contextmanager
def _task_runner(runner: str, workers: int, dask_address: str | None):
    """The task runner for the concurrent stages; None for sequential (in-process)."""
    if runner == "sequential":
        yield None
    elif runner == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        with ProcessPoolTaskRunner(max_workers=workers) as pool:
            yield pool
    elif runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as e:  # pragma: no cover (prefect-dask is in requirements.lock)
            raise ConfigError("runner dask needs prefect-dask and dask[distributed]: run scripts/setup.sh") from e
        if dask_address:
            pool = DaskTaskRunner(address=dask_address)
        else:  # one single-threaded worker process per concurrent run
            pool = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                                  "processes": True, "dashboard_address": None,
                                                  "silence_logs": logging.WARNING})
        with pool:
            yield pool
    else:
        raise ConfigError(f"runner {runner!r}: one of {', '.join(RUNNERS)}")


def _execute(project: str, stages: list[Stage], pool, slots: list[str | None], resources, log):
    """Run the stages in dependency order: concurrent ones on `pool`, each holding one of
    `slots` (a device, or None) while it runs; the others in this process, one at a time.
    Returns ({stage: result}, {stage: error}, [stages not run because an upstream failed])."""
    results, failed, skipped = {}, {}, []
    status = {}  # stage -> "ok" | "failed" | "skipped"
    waiting = list(stages)
    running = {}  # stage -> (future, slot)
    free = list(slots)
    done = queue.Queue()

    def task_for(stage):
        # A cache hit returns the stored summary without running: only valid if the files are there.
        return run_stage.with_options(refresh_cache=True) if _outputs_missing(project, stage) else run_stage

    def parameters(stage, device):
        key, inputs = stage_fingerprint(project, stage.name)
        threads = None
        if pool is not None and stage.concurrent:
            import torch

            threads = torch.get_num_threads()
        return {"project": project, "name": stage.name, "stage": stage, "key": key, "inputs": inputs,
                "device": device, "threads": threads}

    def finish(stage, state, value):
        if state.is_completed():
            status[stage.name] = "ok"
            results[stage.name] = value
        else:
            status[stage.name] = "failed"
            failed[stage.name] = value if isinstance(value, BaseException) else (state.message or state.name)
            log.error("stage %s failed: %s", stage.name, _describe_error(failed[stage.name]))

    def collect(name):
        fut, slot = running.pop(name)
        free.append(slot)
        fut.wait()
        value = fut.result(raise_on_failure=False)
        finish(next(s for s in stages if s.name == name), fut.state, value)

    while waiting or running:
        while not done.empty():
            collect(done.get())
        ready = []
        for stage in list(waiting):
            up = [status.get(u) for u in stage.upstream]
            if any(u in ("failed", "skipped") for u in up):
                waiting.remove(stage)
                status[stage.name] = "skipped"
                skipped.append(stage.name)
            elif all(u == "ok" for u in up):
                ready.append(stage)
        for stage in ready:  # concurrent stages first, onto free slots
            if pool is not None and stage.concurrent and free:
                slot = free.pop(0)
                params = parameters(stage, slot)
                annotate = contextlib.nullcontext()
                if resources:
                    import dask

                    annotate = dask.annotate(resources=resources)
                with annotate:
                    fut = pool.submit(task_for(stage), parameters=params)
                running[stage.name] = (fut, slot)
                waiting.remove(stage)
                fut.add_done_callback(lambda _f, n=stage.name: done.put(n))
        in_process = [s for s in ready if s in waiting and (pool is None or not s.concurrent)]
        if in_process:  # one at a time; the loop then looks at what finished meanwhile
            stage = in_process[0]
            waiting.remove(stage)
            state = task_for(stage)(**parameters(stage, slots[0] if stage.concurrent else None),
                                    return_state=True)
            finish(stage, state, state.result(raise_on_failure=False))
        elif running:
            collect(done.get())
        elif waiting and not ready:  # cannot happen with a DAG from DVC; never spin
            raise RuntimeError(f"stages {[s.name for s in waiting]} wait on stages that never ran")
    return results, failed, skipped


# The flow's own runner runs one task at a time (stages share the process); the concurrent
# stages go to the runner chosen by the `runner` parameter.
@flow(name="drm-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1))
def drm_pipeline(project: str = ".", runner: str = "sequential", workers: int | None = None,
                 devices: list[str] | None = None, dask_address: str | None = None,
                 dask_resources: dict[str, float] | None = None) -> dict:
    """Every dvc.yaml stage as a task, each run once its upstream stages are done; the
    fine-tuning runs (finetune@<method>-<seed>) through `runner`: sequential, process or dask."""
    from drm.params import load_params

    log = get_run_logger()
    project = str(Path(project).resolve())
    load_params(Path(project) / "params.yaml")  # every section valid before any task runs
    devices = _parse_devices(devices)
    resources = _parse_resources(dask_resources)
    if runner not in RUNNERS:
        raise ConfigError(f"runner {runner!r}: one of {', '.join(RUNNERS)}")
    if resources and runner != "dask":
        raise ConfigError("dask_resources (--dask-resources) need runner dask")
    stages = load_stages(project)
    n_concurrent = sum(s.concurrent for s in stages)
    if runner == "sequential":
        slots = [devices[0] if devices else None]
    elif devices:
        if workers and workers > len(devices):
            raise ConfigError(f"{workers} workers but {len(devices)} devices: one run per device")
        slots = devices[:workers] if workers else devices
    elif workers:
        slots = [None] * workers
    elif runner == "dask" and dask_address:  # the cluster's workers and resources decide
        slots = [None] * max(1, n_concurrent)
    else:
        slots = [None] * min(max(1, n_concurrent), os.cpu_count() or 1)
    log.info("runner %s: %d fine-tuning runs, at most %d at once%s", runner, n_concurrent, len(slots),
             f" on {', '.join(d for d in slots if d)}" if any(slots) else "")
    with _api_for_workers(runner), _task_runner(runner, len(slots), dask_address) as pool:
        results, failed, skipped = _execute(project, stages, pool, slots, resources, log)
    if failed:
        raise PipelineFailed(failed, skipped, sorted(results))
    return results


@contextlib.contextmanager
def _api_for_workers(runner: str):
    """Worker processes report to the server this flow reports to: without PREFECT_API_URL
    (Prefect's temporary server) each would otherwise start a temporary server of its own."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ctx = FlowRunContext.get()
    url = getattr(getattr(ctx, "client", None), "api_url", None)
    if runner == "sequential" or PREFECT_API_URL.value() or not url:
        yield
        return
    with temporary_settings(updates={PREFECT_API_URL: str(url).rstrip("/")}):
        yield


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def serve(project: str, cron: str | None = None, interval: float | None = None, name: str = "drm-scheduled",
          **options) -> None:
    """Serve the flow on a schedule. Prefect's temporary server cannot schedule runs, so refuse it."""
    if not _api_url():
        raise ConfigError("scheduled runs need a Prefect server (the temporary one Prefect starts by itself "
                          "never schedules anything): start one with `scripts/prefect_server.sh` (or "
                          "`prefect server start`) in another terminal, then set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api and rerun (docs/orchestration.md)")
    parameters = {"project": str(Path(project).resolve()), **{k: v for k, v in options.items() if v is not None}}
    schedule = {"interval": interval} if interval else {"cron": cron}
    # limit=1: one run at a time (two runs of one project would write the same files); a run
    # due while one is going waits for it.
    drm_pipeline.serve(name=name, parameters=parameters, limit=1, **schedule)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", default=".", help="the project folder (dvc.yaml, params.yaml, stages/)")
    ap.add_argument("--runner", choices=RUNNERS, default="sequential",
                    help="how the fine-tuning runs are run: in this process one at a time (default), in a "
                         "process pool, or on Dask")
    ap.add_argument("--workers", type=int, default=None,
                    help="fine-tuning runs at once (default: the number of --devices, else of runs, at most "
                         "the CPU count; with --dask-address: as many as the cluster takes)")
    ap.add_argument("--devices", default=None,
                    help="comma-separated devices, e.g. cuda:0,cuda:1: each concurrent run gets one (DRM_DEVICE)")
    ap.add_argument("--dask-address", default=None, help="an existing Dask scheduler, e.g. tcp://host:8786 "
                    "(default: a temporary LocalCluster of --workers processes)")
    ap.add_argument("--dask-resources", default=None,
                    help="Dask worker resources each fine-tuning task needs, e.g. GPU=1")
    ap.add_argument("--serve", action="store_true", help="serve the flow on a schedule (long-running)")
    ap.add_argument("--cron", default="0 3 * * *", help="schedule for --serve (default: daily 03:00)")
    ap.add_argument("--interval", type=float, default=None, help="schedule for --serve: every N seconds "
                    "(instead of --cron)")
    args = ap.parse_args(argv)
    options = {"runner": args.runner, "workers": args.workers, "devices": _parse_devices(args.devices),
               "dask_address": args.dask_address, "dask_resources": _parse_resources(args.dask_resources)}
    try:
        if args.serve:
            serve(args.project, cron=args.cron, interval=args.interval, **options)
        else:
            print(json.dumps(drm_pipeline(args.project, **options), indent=2, default=str))
    except DRMError as e:  # the task's failure is in Prefect's log; the fix, on one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except PipelineFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if e.user_error else 1)


if __name__ != "pipeline.flow":
    # Run as a script (`python -m pipeline.flow`) or loaded by path (Prefect loads the
    # entrypoint `pipeline/flow.py:drm_pipeline` so): use the importable module's objects, so
    # that the tasks sent to worker processes and Dask workers pickle by reference.
    if str(Path(__file__).resolve().parents[1]) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipeline.flow import drm_pipeline, main, run_stage  # noqa: F811,E402

if __name__ == "__main__":
    main()
