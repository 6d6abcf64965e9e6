"""The Prefect flow runs the same stages in one process, caches across runs, and reruns only
what a params change affects."""
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


def test_flow_runs_caches_and_reruns_only_affected(harness, tmp_path):
    from pipeline.flow import drm_pipeline
    from tests.conftest import tiny_params_dict

    params = tiny_params_dict()
    params["finetune"]["methods"] = ["drm"]
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    out = drm_pipeline(str(pfile))
    assert (tmp_path / out["report"]).exists()
    weights = tmp_path / "models/pretrained/open_clip_model.safetensors"
    run_model = tmp_path / "runs/drm-s0/model.safetensors"
    metrics = tmp_path / "metrics/evaluate.json"
    report = tmp_path / "reports/report.md"
    stamps = {p: p.stat().st_mtime_ns for p in (weights, run_model, metrics, report)}

    drm_pipeline(str(pfile))  # nothing changed: every task is a cache hit
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    params["evaluate"]["beta"] = 0.2
    pfile.write_text(yaml.safe_dump(params))
    drm_pipeline(str(pfile))  # only evaluate and report rerun
    assert weights.stat().st_mtime_ns == stamps[weights]
    assert run_model.stat().st_mtime_ns == stamps[run_model]
    assert metrics.stat().st_mtime_ns != stamps[metrics]
    assert report.stat().st_mtime_ns != stamps[report]
    assert "beta" in report.read_text()

    # an overrides file in descriptions/: params hold its path, the cache key its contents
    (tmp_path / "descriptions").mkdir()
    over = tmp_path / "descriptions/over.json"
    over.write_text(json.dumps({"0": ["first hand-written sentence"]}))
    params["describe"]["overrides"] = "descriptions/over.json"
    pfile.write_text(yaml.safe_dump(params))
    drm_pipeline(str(pfile))
    desc = tmp_path / "data/descriptions.json"
    assert "first hand-written sentence" in desc.read_text()
    over.write_text(json.dumps({"0": ["second hand-written sentence"]}))  # same params
    drm_pipeline(str(pfile))
    assert "second hand-written sentence" in desc.read_text()
    assert run_model.stat().st_mtime_ns != stamps[run_model]  # new cd head: fine-tuning reran

    params["world"]["noise"] = [0.04, 0.06]  # upstream change: everything downstream reruns
    pfile.write_text(yaml.safe_dump(params))
    drm_pipeline(str(pfile))
    assert weights.stat().st_mtime_ns != stamps[weights]
    assert run_model.stat().st_mtime_ns != stamps[run_model]


def test_user_errors_are_not_retried():
    """A DRMError (bad params, missing key or data) fails the task at once; other errors go
    to the task's retry policy."""
    from prefect.states import Failed

    from drm.errors import ConfigError, MissingArtifactError
    from pipeline import flow

    cond = flow.retry_unless_user_error
    assert cond(None, None, Failed(data=ConfigError("OPENAI_API_KEY is not set"))) is False
    assert cond(None, None, Failed(data=MissingArtifactError("data/world", "world"))) is False
    assert cond(None, None, Failed(data=OSError("connection reset"))) is True
    retried = [t for t in (flow.world, flow.pretrain, flow.describe, flow.zeroshot, flow.finetune) if t.retries]
    assert len(retried) == 5 and all(t.retry_condition_fn is cond for t in retried)


def test_a_user_error_fails_the_flow_with_one_line(harness, tmp_path, monkeypatch, capsys):
    from pipeline import flow
    from tests.conftest import tiny_params_dict

    params = tiny_params_dict()
    params["describe"] = {"provider": "openai", "openai": {"api_key_env": "DRM_TEST_ABSENT_KEY"}}
    monkeypatch.delenv("DRM_TEST_ABSENT_KEY", raising=False)
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exit_:
        flow.main(["--params", str(pfile)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "DRM_TEST_ABSENT_KEY" in err
