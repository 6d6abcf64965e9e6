"""The Prefect flow runs dvc.yaml's stages in one process, caches across runs on what DVC
compares (cmd, params, dependency content), and reruns only what a change affects."""
import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

_HOME = tempfile.mkdtemp(prefix="drm-prefect-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ.setdefault("PREFECT_HOME", _HOME)
os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(Path(_HOME) / "storage"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flow_follows_dvc_yaml_caches_and_reruns_only_affected(harness, tmp_path):
    from pipeline.flow import drm_pipeline
    from tests.conftest import make_project, tiny_params_dict

    params = tiny_params_dict()
    params["finetune"]["methods"] = ["drm"]
    proj = make_project(tmp_path / "proj", params, code=True)
    (proj / "descriptions").mkdir()
    out = drm_pipeline(str(proj))
    assert set(out) == {"world", "pretrain", "describe", "zeroshot", "finetune@drm-0", "evaluate",
                        "diagnostics", "report"}  # the stages of dvc.yaml, resolved by DVC
    weights = proj / "models/pretrained/open_clip_model.safetensors"
    run_model = proj / "runs/drm-s0/model.safetensors"
    metrics = proj / "metrics/evaluate.json"
    report = proj / "reports/report.md"
    stamps = {p: p.stat().st_mtime_ns for p in (weights, run_model, metrics, report)}

    drm_pipeline(str(proj))  # nothing changed: every task is a cache hit
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    params["evaluate"]["beta"] = 0.2
    params["runtime"]["threads"] = 1  # a runtime setting reruns nothing
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    drm_pipeline(str(proj))  # only evaluate and report rerun
    assert weights.stat().st_mtime_ns == stamps[weights]
    assert run_model.stat().st_mtime_ns == stamps[run_model]
    assert metrics.stat().st_mtime_ns != stamps[metrics]
    assert report.stat().st_mtime_ns != stamps[report]
    assert "beta" in report.read_text()

    # an overrides file in descriptions/: params hold its path, the cache key its contents
    over = proj / "descriptions/over.json"
    over.write_text(json.dumps({"0": ["first hand-written sentence"]}))
    params["describe"]["overrides"] = "descriptions/over.json"
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    drm_pipeline(str(proj))
    desc = proj / "data/descriptions.json"
    assert "first hand-written sentence" in desc.read_text()
    over.write_text(json.dumps({"0": ["second hand-written sentence"]}))  # same params
    drm_pipeline(str(proj))
    assert "second hand-written sentence" in desc.read_text()
    assert run_model.stat().st_mtime_ns != stamps[run_model]  # new cd head: fine-tuning reran

    stamps = {p: p.stat().st_mtime_ns for p in stamps}
    source = proj / "drm/report/run.py"  # a code change reruns the stages that import it, only
    source.write_text(source.read_text() + "\n# edited\n")
    drm_pipeline(str(proj))
    assert report.stat().st_mtime_ns != stamps[report]
    assert run_model.stat().st_mtime_ns == stamps[run_model] and metrics.stat().st_mtime_ns == stamps[metrics]

    run_model.unlink()  # a deleted output reruns its stage despite the cache hit
    drm_pipeline(str(proj))
    assert run_model.exists()

    params["world"]["noise"] = [0.04, 0.06]  # upstream change: everything downstream reruns
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    drm_pipeline(str(proj))
    assert weights.stat().st_mtime_ns != stamps[weights]
    assert run_model.stat().st_mtime_ns != stamps[run_model]


def test_user_errors_are_not_retried():
    """A DRMError (bad params, missing key or data) fails the task at once; other errors go
    to the task's retry policy."""
    from prefect.states import Failed

    from drm.base.errors import ConfigError, MissingArtifactError
    from pipeline import flow

    cond = flow.retry_unless_user_error
    assert cond(None, None, Failed(data=ConfigError("OPENAI_API_KEY is not set"))) is False
    assert cond(None, None, Failed(data=MissingArtifactError("data/world", "world"))) is False
    assert cond(None, None, Failed(data=OSError("connection reset"))) is True
    assert flow.run_stage.retries and flow.run_stage.retry_condition_fn is cond


def test_a_user_error_fails_the_flow_with_one_line(harness, tmp_path, monkeypatch, capsys):
    from pipeline import flow
    from tests.conftest import make_project, tiny_params_dict

    params = tiny_params_dict()
    params["describe"] = {"provider": "openai", "openai": {"api_key_env": "DRM_TEST_ABSENT_KEY"}}
    monkeypatch.delenv("DRM_TEST_ABSENT_KEY", raising=False)
    proj = make_project(tmp_path / "proj", params)
    with pytest.raises(SystemExit) as exit_:
        flow.main(["--project", str(proj)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "DRM_TEST_ABSENT_KEY" in err


def test_scheduled_runs_refuse_the_temporary_server(monkeypatch, capsys):
    """Prefect's temporary server never fires a schedule: --serve says what to start instead."""
    from pipeline import flow

    monkeypatch.setattr(flow, "_api_url", lambda: None)  # as with PREFECT_API_URL unset

    def must_not_serve(*a, **k):
        raise AssertionError("served on a temporary server")

    monkeypatch.setattr(flow.drm_pipeline, "serve", must_not_serve)
    with pytest.raises(SystemExit) as exit_:
        flow.main(["--serve", "--cron", "* * * * *"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "need a Prefect server" in err and "prefect server start" in err and "PREFECT_API_URL" in err


# ---- runners: concurrent fine-tuning runs, failures that fail alone, new data ----------------

FINETUNE_STAGES = ("world", "pretrain", "describe", "zeroshot", "finetune")


@pytest.fixture(scope="module")
def finetuned(harness, tmp_path_factory):
    """A project of the stages world..finetune (methods drm and erm), run by the sequential
    runner: the reference for the other runners (their upstream stages are cache hits)."""
    from pipeline.flow import drm_pipeline
    from tests.conftest import make_project, tiny_params_dict
    from tests.flow_helpers import keep_stages

    params = tiny_params_dict()
    params["finetune"]["methods"] = ["drm", "erm"]
    proj = make_project(tmp_path_factory.mktemp("finetuned") / "proj", params)
    (proj / "descriptions").mkdir()
    keep_stages(proj, FINETUNE_STAGES)
    return proj, drm_pipeline(str(proj))


def _same_bytes(a, b, run):
    for name in ("predictions.parquet", "model.safetensors"):
        assert (a / "runs" / run / name).read_bytes() == (b / "runs" / run / name).read_bytes(), f"{run}/{name} differs"


def test_dask_runner_runs_finetuning_concurrently_with_the_same_results(finetuned, tmp_path):
    """Two fine-tuning runs on a local Dask cluster (2 worker processes, 1 thread each, each
    worker one GPU resource, which each run asks for): they overlap in time, run in two other
    processes, and write the bytes the sequential runner wrote."""
    import logging

    from distributed import LocalCluster

    from pipeline.flow import drm_pipeline
    from tests.flow_helpers import copy_project

    ref, ref_out = finetuned
    proj = copy_project(ref, tmp_path / "proj")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1},
                      dashboard_address=None, silence_logs=logging.WARNING) as cluster:
        out = drm_pipeline(str(proj), runner="dask", dask_address=cluster.scheduler_address,
                           dask_resources={"GPU": 1})
    drm, erm = out["finetune@drm-0"], out["finetune@erm-0"]
    assert drm["started"] < erm["ended"] and erm["started"] < drm["ended"], (drm, erm)  # at once
    assert len({drm["pid"], erm["pid"], os.getpid()}) == 3  # each in its own worker process
    for stage in ("world", "pretrain", "describe", "zeroshot"):  # upstream: cache hits, in-process
        assert out[stage]["started"] == ref_out[stage]["started"]
    for run in ("drm-s0", "erm-s0"):
        _same_bytes(ref, proj, run)


def test_a_failed_run_fails_alone(finetuned, tmp_path):
    """One fine-tuning run raises (its stage script, edited in the project); the other, run
    at the same time by the process runner, finishes and writes its artifacts; the flow ends
    failed, naming the failed stage and its error."""
    from pipeline.flow import PipelineFailed, drm_pipeline
    from tests.flow_helpers import copy_project

    ref, _ = finetuned
    proj = copy_project(ref, tmp_path / "proj")
    script = proj / "stages/finetune.py"
    text = script.read_text()
    hook = "    args = p.parse_args(argv)\n"
    assert hook in text
    script.write_text(text.replace(hook, hook + '    if args.method == "erm":\n'
                                   '        raise RuntimeError("injected failure in erm")\n'))
    state = drm_pipeline(str(proj), runner="process", workers=2, return_state=True)
    assert state.is_failed()
    assert "finetune@erm-0" in state.message and "injected failure in erm" in state.message
    err = state.result(raise_on_failure=False)
    assert isinstance(err, PipelineFailed) and set(err.failed) == {"finetune@erm-0"}
    assert "finetune@drm-0" in err.completed and not (proj / "runs/erm-s0/model.safetensors").exists()
    _same_bytes(ref, proj, "drm-s0")


def test_new_images_rerun_zeroshot_and_what_follows(finetuned, tmp_path):
    """data.source imagefolder: an image added to id_test (and one changed in train) reruns
    describe, zeroshot and every later stage, with the new row in the logits; a third run with
    nothing changed runs nothing."""
    import pandas as pd

    from pipeline.flow import drm_pipeline
    from tests.conftest import make_project, tiny_params_dict
    from tests.flow_helpers import IMAGE_CLASSES, image_folder, write_png

    ref, _ = finetuned
    params = tiny_params_dict()
    params["finetune"]["methods"] = ["erm"]
    params["data"] = {"source": "imagefolder", "root": "images"}
    params["describe"]["provider"] = "file"
    params["describe"]["file"] = "descriptions/colours.json"
    params["evaluate"]["group_by"] = ["domain"]  # an image folder's one group column
    proj = make_project(tmp_path / "proj", params)
    (proj / "descriptions").mkdir()
    (proj / "descriptions/colours.json").write_text(json.dumps(
        {c: [f"a {c} square", f"a patch of {c} colour"] for c in IMAGE_CLASSES}))
    image_folder(proj / "images")
    for out in ("data/world", "models/pretrained", "models/pretrain-run"):  # the same world: cache hits
        shutil.copytree(ref / out, proj / out)

    first = drm_pipeline(str(proj))
    logits = proj / "data/zeroshot/logits.parquet"
    rows = len(pd.read_parquet(logits))
    assert first["world"]["started"] < first["zeroshot"]["started"]

    write_png(proj / "images/id_test/red/new.png", IMAGE_CLASSES["red"], seed=999)  # a new image
    write_png(proj / "images/train/blue/000.png", (10, 10, 250), seed=998)  # a changed one
    second = drm_pipeline(str(proj))
    later = {"describe", "zeroshot", "finetune@erm-0", "evaluate", "diagnostics", "report"}
    assert set(second) == set(first)
    for stage, result in second.items():
        assert (result["started"] != first[stage]["started"]) == (stage in later), stage
    table = pd.read_parquet(logits)
    assert len(table) == rows + 1 and "id_test/red/new.png" in set(table["id"])

    third = drm_pipeline(str(proj))  # nothing changed: every stage a cache hit
    assert {s: r["started"] for s, r in third.items()} == {s: r["started"] for s, r in second.items()}


def test_devices_are_lent_one_run_at_a_time(harness, monkeypatch):
    """--devices: each concurrent run holds one device while it runs (its task sets
    DRM_DEVICE to it in its process), and no two runs hold the same one; four runs on two devices (a thread
    pool and a stub stage stand in for processes and training)."""
    import contextlib
    import logging
    import threading
    import time
    import uuid

    from prefect.task_runners import ThreadPoolTaskRunner

    from pipeline import flow

    seen, lock = [], threading.Lock()
    state, cond = {"active": 0, "most": 0}, threading.Condition()

    def fake_stage(project, stage):
        start = time.monotonic()
        with cond:
            state["active"] += 1
            state["most"] = max(state["most"], state["active"])
            cond.notify_all()
            # Wait (bounded) for a second run to be running at the same time: a flow that ran
            # one at a time makes this time out and `most` stay 1. No timing threshold, which a
            # loaded machine (slow task submission) can miss.
            cond.wait_for(lambda: state["most"] >= 2, timeout=60)
        time.sleep(0.2)
        with cond:
            state["active"] -= 1
        with lock:
            seen.append((stage.name, start, time.monotonic()))
        return {}

    monkeypatch.setattr(flow, "run_stage_script", fake_stage)
    # threads share os.environ (processes do not): leave DRM_DEVICE alone here
    monkeypatch.setattr(flow, "_device_env", lambda device: contextlib.nullcontext())
    monkeypatch.delenv("DRM_DEVICE", raising=False)
    monkeypatch.setattr(flow, "stage_fingerprint", lambda project, name: (uuid.uuid4().hex, {}))
    stages = [flow.Stage(name=f"finetune@m{i}-0", script="stages/finetune.py", argv=(), deps=(), outs=(),
                         upstream=()) for i in range(4)]
    with ThreadPoolTaskRunner(max_workers=4) as pool:
        results, failed, skipped = flow._execute("/nonexistent", stages, pool, ["cuda:0", "cuda:1"], None,
                                                 logging.getLogger("test"))
    assert not failed and not skipped and len(results) == 4
    by_device = {}
    for name, result in results.items():
        by_device.setdefault(result["device"], []).append((result["started"], result["ended"]))
    assert set(by_device) == {"cuda:0", "cuda:1"}
    for spans in by_device.values():  # one run per device at a time
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans
    assert state["most"] == 2  # the two devices were used at once, and never more runs than devices
