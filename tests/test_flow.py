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
