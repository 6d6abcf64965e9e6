"""The same pipeline as dvc.yaml, as a Prefect flow: each stage is a task over the same
drm.steps function, with retries, cross-run caching and optional schedules.

    python -m pipeline.flow                      # run once (a temporary local Prefect server)
    python -m pipeline.flow --serve --cron "0 3 * * *"   # run on a schedule (long-running)

Caching: a task's cache key is its inputs (the params sections it reads, the summaries of
the tasks it depends on, a hash of the drm library's source) plus its own source, so a
rerun with nothing changed skips every task, and a change reruns what it affects. Results
are persisted under PREFECT_HOME. DVC stays the reference for artifact tracking; the flow
writes the same files in the same places.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from drm import steps
from drm.config import Params, load_params
from drm.errors import DRMError

# The full params travel as params_json but are not part of the key: each task is keyed on
# the sections it reads (`section`), so a change elsewhere does not rerun it.
CACHE = (INPUTS - "params_json") + TASK_SOURCE
LIB = Path(__file__).resolve().parents[1] / "drm"


def code_version() -> str:
    """Hash of the library's source: a code change invalidates the flow's cache."""
    h = hashlib.sha256()
    for f in sorted(LIB.rglob("*.py")):
        h.update(f.relative_to(LIB).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(base: str, *paths: str) -> str:
    """Content hash of output files/folders: what downstream tasks key their cache on, so a
    rerun upstream that changes its outputs reruns them, and one that doesn't, doesn't."""
    h = hashlib.sha256()
    for rel in paths:
        p = Path(base) / rel
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(f.relative_to(base).as_posix().encode())
            h.update(f.read_bytes() if f.exists() else b"<missing>")
    return h.hexdigest()[:16]


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


def _params(params_json: str) -> Params:
    return Params.model_validate_json(params_json)


def _section(params: Params, *names: str) -> str:
    return json.dumps({n: getattr(params, n).model_dump() if hasattr(getattr(params, n), "model_dump")
                       else getattr(params, n) for n in names}, sort_keys=True, default=str)


@task(cache_policy=CACHE, persist_result=True, retries=1, retry_condition_fn=retry_unless_user_error)
def world(params_json: str, section: str, base: str, code: str) -> str:
    steps.world(_params(params_json), base, progress=False)
    return fingerprint(base, "data/world")


@task(cache_policy=CACHE, persist_result=True, retries=1, retry_condition_fn=retry_unless_user_error)
def pretrain(params_json: str, section: str, base: str, code: str, upstream: str) -> str:
    steps.pretrain(_params(params_json), base, progress=False)
    return fingerprint(base, "models/pretrained")


@task(cache_policy=CACHE, persist_result=True, retries=2, retry_delay_seconds=10,
      retry_condition_fn=retry_unless_user_error)
def describe(params_json: str, section: str, base: str, code: str, upstream: list) -> str:
    steps.describe(_params(params_json), base, progress=False)
    return fingerprint(base, "data/descriptions.json")


@task(cache_policy=CACHE, persist_result=True, retries=1, retry_condition_fn=retry_unless_user_error)
def zeroshot(params_json: str, section: str, base: str, code: str, upstream: list) -> str:
    steps.zeroshot(_params(params_json), base, progress=False)
    return fingerprint(base, "data/zeroshot")


@task(cache_policy=CACHE, persist_result=True, retries=1, retry_condition_fn=retry_unless_user_error)
def finetune(params_json: str, section: str, method: str, seed: int, base: str, code: str,
             upstream: str) -> str:
    steps.finetune(_params(params_json), method, seed, base, progress=False)
    run = f"runs/{method}-s{seed}"
    return fingerprint(base, f"{run}/model.safetensors", f"{run}/predictions.parquet")


@task(cache_policy=CACHE, persist_result=True)
def evaluate(params_json: str, section: str, base: str, code: str, upstream: list) -> str:
    steps.evaluate(_params(params_json), base, progress=False)
    return fingerprint(base, "metrics/all.csv")


@task(cache_policy=CACHE, persist_result=True)
def diagnostics(params_json: str, section: str, base: str, code: str, upstream: list) -> str:
    steps.diagnostics(_params(params_json), base, progress=False)
    return fingerprint(base, "reports/diagnostics.md")


@task(cache_policy=CACHE, persist_result=True)
def report(params_json: str, section: str, base: str, code: str, upstream: list) -> dict:
    return steps.report(_params(params_json), base)


@flow(name="drm-pipeline")
def drm_pipeline(params_path: str = "params.yaml") -> dict:
    """world -> pretrain -> describe -> zeroshot -> finetune (methods x seeds) -> evaluate,
    diagnostics -> report. Each task returns a content hash of its outputs."""
    params = load_params(params_path)
    base = str(Path(params_path).resolve().parent)
    pj = params.model_dump_json()
    code = code_version()
    w = world(pj, _section(params, "world"), base, code)
    p = pretrain(pj, _section(params, "pretrain"), base, code, w)
    # the description files' contents are part of describe's key (params hold only their paths)
    d = describe(pj, _section(params, "describe", "data"), base, code,
                 [w, fingerprint(base, *steps.describe_inputs(params))])
    z = zeroshot(pj, _section(params, "zeroshot", "model", "data"), base, code, [p, d])
    ft_section = params.finetune.model_dump(exclude={"methods"})
    runs = []
    for method in params.finetune.methods:
        section = json.dumps({"method": params.methods[method].model_dump(), "finetune": ft_section,
                              "templates": params.zeroshot.templates,
                              "wise": params.wise.model_dump(), "model": params.model.model_dump(),
                              "data": params.data.model_dump()}, sort_keys=True)
        for seed in params.seeds:
            runs.append(finetune(pj, section, method, seed, base, code, z))
    e = evaluate(pj, json.dumps({"evaluate": params.evaluate.model_dump(), "seeds": params.seeds,
                                 "methods": params.finetune.methods}, sort_keys=True), base, code, [z, *runs])
    g = diagnostics(pj, _section(params, "world", "model", "data"), base, code, [p, z])
    return report(pj, _section(params, "report"), base, code, [e, g])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--serve", action="store_true", help="serve the flow on a schedule (long-running)")
    ap.add_argument("--cron", default="0 3 * * *", help="schedule for --serve (default: daily 03:00)")
    args = ap.parse_args(argv)
    if args.serve:
        drm_pipeline.serve(name="drm-scheduled", cron=args.cron, parameters={"params_path": args.params})
    else:
        try:
            print(json.dumps(drm_pipeline(args.params), indent=2))
        except DRMError as e:  # the task's failure is in Prefect's log; the fix, on one line
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
