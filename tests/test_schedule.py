"""Scheduled runs against a real Prefect server (scripts/prefect_server.sh, a temporary
PREFECT_HOME, SQLite): `python -m pipeline.flow --serve` on an interval schedule makes the
server's scheduler create flow runs that complete; prefect.yaml's `nightly` deployment is
accepted by `prefect deploy`, keeps its cron schedule, and a process worker runs it."""
import json
import subprocess
import sys
import time

import pytest

from tests.flow_helpers import ROOT, free_port, keep_stages, start, stop, venv_env, wait_healthy

pytestmark = pytest.mark.slow


def _client(api):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Client:
        def __enter__(self):
            self._settings = temporary_settings(updates={PREFECT_API_URL: api})
            self._settings.__enter__()
            self._client = get_client(sync_client=True)
            return self._client.__enter__()

        def __exit__(self, *exc):
            self._client.__exit__(*exc)
            self._settings.__exit__(*exc)

    return _Client()


def _runs(api, deployment: str):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with _client(api) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))


def _wait_completed(api, deployment, procs, logs, timeout=150):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs):
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args} exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        runs = _runs(api, deployment)
        done = [r for r in runs if r.state and r.state.is_final()]
        if done:
            return done[0], runs
        time.sleep(1)
    raise AssertionError(f"no run of {deployment} ended in {timeout} s:\n" +
                         "\n".join(log.read_text()[-3000:] for log in logs))


def _sh(args, env, cwd=ROOT):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=120)
    assert r.returncode == 0, f"{args}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_schedules_fire_on_a_real_server(tmp_path):
    from tests.conftest import make_project, tiny_params_dict

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = venv_env(PREFECT_HOME=tmp_path / "prefect-home", PREFECT_SERVER_API_PORT=port,
                   PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120, PREFECT_LOGGING_LEVEL="INFO",
                   PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS=5,  # default 60: the test's pace
                   PREFECT_RUNNER_POLL_FREQUENCY=2, PREFECT_WORKER_QUERY_SECONDS=2)
    env.pop("PREFECT_API_URL", None)
    procs, logs = [], []

    def launch(args, name, proc_env):
        logs.append(tmp_path / f"{name}.log")
        procs.append(start(args, logs[-1], proc_env))
        return procs[-1]

    try:
        server = launch(["bash", "scripts/prefect_server.sh"], "server", env)
        wait_healthy(api, server, logs[0])
        client_env = dict(env, PREFECT_API_URL=api)

        # 1. served with an interval schedule: the scheduler creates runs, they complete
        proj = make_project(tmp_path / "served", tiny_params_dict())
        keep_stages(proj, ["world"])
        launch([sys.executable, "-m", "pipeline.flow", "--project", str(proj), "--serve", "--interval", "5"],
               "serve", client_env)
        run, _ = _wait_completed(api, "drm-scheduled", procs, logs)
        assert run.state.is_completed(), run.state
        assert run.auto_scheduled  # made by the server's scheduler, not by hand
        assert run.parameters["project"] == str(proj)
        assert (proj / "data/world/train.parquet").exists()
        stop(procs.pop())
        logs.pop()

        # 2. prefect.yaml's nightly deployment, on a process work pool, run by a worker
        nightly = make_project(tmp_path / "nightly", tiny_params_dict())
        keep_stages(nightly, ["world"])
        _sh(["prefect", "work-pool", "create", "drm-process", "--type", "process"], client_env)
        _sh(["prefect", "--no-prompt", "deploy", "--name", "nightly", "--param", f"project={json.dumps(str(nightly))}"],
            client_env)
        with _client(api) as client:
            deployment = client.read_deployment_by_name("drm-pipeline/nightly")
        assert deployment.entrypoint == "pipeline/flow.py:drm_pipeline"
        assert deployment.work_pool_name == "drm-process"
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
        assert deployment.parameters["runner"] == "process" and deployment.parameters["project"] == str(nightly)
        _sh(["prefect", "deployment", "run", "drm-pipeline/nightly"], client_env)
        launch(["prefect", "worker", "start", "--pool", "drm-process"], "worker", client_env)
        run, _ = _wait_completed(api, "nightly", procs, logs)
        assert run.state.is_completed(), (run.state, logs[-1].read_text()[-3000:])
        assert (nightly / "data/world/train.parquet").exists()
    finally:
        for proc in reversed(procs):
            stop(proc)
