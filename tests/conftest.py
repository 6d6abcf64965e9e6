import os

import pytest

os.environ.setdefault("DRM_NO_PROGRESS", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

TINY_PARAMS = {
    "seeds": [0],
    "world": {"n_pretrain": 1024, "n_train": 128, "n_id_val": 32, "n_id_test": 32,
              "n_ood_val": 32, "n_ood_test": 48},
    "pretrain": {"steps": 12, "batch_size": 128, "warmup": 2},
    "finetune": {"methods": ["erm", "drm", "lpft", "drm_flyp"], "epochs": 1, "batch_size": 64, "warmup_steps": 1},
    "wise": {"alphas": [0.0, 1.0]},
    # One torch thread: on tiny tensors threads cost more than they give, most of all on a busy machine.
    "runtime": {"threads": 1},
}


def tiny_params_dict() -> dict:
    """The project's params.yaml with TINY_PARAMS merged in (a valid, minutes-free run)."""
    from pathlib import Path

    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    return params


@pytest.fixture
def tiny_params():
    import copy

    return copy.deepcopy(TINY_PARAMS)


def make_project(path, params: dict, code: bool = False):
    """A project folder the pipeline runs in: dvc.yaml (and embedded/dvc.yaml), the stage scripts, params.yaml (as
    given) and an initialised DVC repo without git; with `code`, a copy of drm/ too (so the
    code dependencies hash as in the repository). Returns its path."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "dvc.yaml", path / "dvc.yaml")
    (path / "embedded").mkdir(exist_ok=True)
    shutil.copy(root / "embedded" / "dvc.yaml", path / "embedded" / "dvc.yaml")
    shutil.copytree(root / "stages", path / "stages", ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    if code:
        shutil.copytree(root / "drm", path / "drm", ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (path / ".dvc").exists():
        dvc = Path(sys.executable).parent / "dvc"
        subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=path, check=True)
    return path


@pytest.fixture(scope="session")
def reproduced_git_project(tmp_path_factory):
    """The tiny default project, `dvc repro`-ed once per session in a git repo and committed
    (tests/test_pipeline_dvc.py, tests/test_experiments.py): (folder, the repro's output).
    Modules change it, so each takes its own copy (copy_git_project)."""
    from tests.test_pipeline_dvc import _run, git_project

    proj, env = git_project(tmp_path_factory.mktemp("reproduced"), tiny_params_dict(),
                            files=("dvc.yaml", "embedded/dvc.yaml", ".gitignore"))
    out = _run(["dvc", "repro"], proj, env)
    _run(["git", "add", "-A"], proj, env)
    _run(["git", "commit", "-qm", "tiny project, reproduced"], proj, env)
    return proj, out


def copy_git_project(reproduced, tmp) -> tuple:
    """A copy of the reproduced project (git history, DVC cache and outputs) in tmp/proj:
    (folder, env); DVC rehashes the copied files once (their inodes are new)."""
    import shutil

    from tests.test_pipeline_dvc import _env

    proj = tmp / "proj"
    shutil.copytree(reproduced, proj, symlinks=True)
    shutil.rmtree(proj / ".dvc" / "tmp", ignore_errors=True)  # the original's state and locks
    return proj, _env(tmp)


def run_stages(project, names):
    """Run the named dvc.yaml stages in-process, in order, as the Prefect flow does."""
    from pipeline.flow import load_stages, run_stage_script

    stages = {s.name: s for s in load_stages(str(project))}
    return [run_stage_script(str(project), stages[n]) for n in names]


# ---- helpers for interrupted runs (tests/test_resume.py, tests/test_faults.py) ----------------

_HANG_HOOK = '''\
"""Test hook (tests/conftest.py: hang_env): make a stage process stop, before publishing its
Nth output named DRM_TEST_HANG_AT=NAME:N, write its pid to DRM_TEST_HANG_MARKER and wait there
to be killed. Loaded as sitecustomize, so it works in processes started by dvc too."""
import os

_spec = os.environ.get("DRM_TEST_HANG_AT")
if _spec:
    import time
    from pathlib import Path

    import drm.base.atomic as _atomic

    _name, _, _nth = _spec.partition(":")
    _seen = [0]
    _publish = _atomic._replace

    def _hang_before(src, dst):
        if Path(dst).name == _name:
            _seen[0] += 1
            if _seen[0] == int(_nth or 1):
                marker = Path(os.environ["DRM_TEST_HANG_MARKER"])
                marker.with_suffix(".tmp").write_text(str(os.getpid()))
                os.replace(marker.with_suffix(".tmp"), marker)
                while True:
                    time.sleep(0.2)
        return _publish(src, dst)

    _atomic._replace = _hang_before
'''


def hang_env(folder, at: str, env: dict | None = None) -> tuple[dict, "Path"]:
    """(environment, marker path) that make a stage process started with it stop before it
    publishes the output `at` ("NAME" or "NAME:N" for the Nth time, e.g. "last.pt:2", the second
    checkpoint) and write its pid to the marker; then `kill_when_hung(marker)` kills it."""
    import os
    from pathlib import Path

    folder = Path(folder)
    hook = folder / "hang-hook"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(_HANG_HOOK)
    marker = folder / "hung.pid"
    marker.unlink(missing_ok=True)
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(hook)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["DRM_TEST_HANG_AT"] = at
    env["DRM_TEST_HANG_MARKER"] = str(marker)
    return env, marker


def kill_when_hung(marker, proc, timeout: float = 300) -> int:
    """Wait until the process that `hang_env` set up has stopped at its output (or `proc`, the
    process started, has ended: an error), then SIGKILL it by its pid; returns the pid."""
    import os
    import signal
    import time
    from pathlib import Path

    marker = Path(marker)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended (rc {proc.returncode}) before it hung:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the process did not reach its hang point in {timeout} s")
        time.sleep(0.05)
    pid = int(marker.read_text())
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    return pid


def dvc_env(tmp) -> dict:
    """The environment to run dvc and stage scripts in a temporary project."""
    import sys
    from pathlib import Path

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = str(Path(tmp) / "dvc-site-cache")
    env["DRM_NO_PROGRESS"] = "1"
    return env


# Small and quick: 3 training batches per epoch (so a checkpoint can fall mid-epoch), 2 epochs,
# one torch thread (several threads on a busy small machine are many times slower).
RESUMABLE_PARAMS = {
    "world": {"n_pretrain": 256, "n_train": 96},
    "pretrain": {"steps": 2, "warmup": 1},
    "finetune": {"methods": ["erm", "drm_flyp"], "epochs": 2, "batch_size": 32, "warmup_steps": 1},
    "runtime": {"threads": 1, "checkpoint_steps": 2, "checkpoint_minutes": 0},
}


@pytest.fixture(scope="session")
def zeroshot_project(tmp_path_factory):
    """A DVC project (no git) on tiny params whose world, pretrain, describe and zeroshot stages
    ran under `dvc repro` (dvc.lock written): (folder, env). Copy it (`copy_project`) to change it."""
    import shutil
    import subprocess
    from pathlib import Path

    tmp = tmp_path_factory.mktemp("zeroshot-project")
    params = tiny_params_dict()
    for section, values in RESUMABLE_PARAMS.items():
        params[section].update(values)
    proj = make_project(tmp / "proj", params, code=True)
    shutil.copytree(Path(__file__).resolve().parents[1] / "descriptions", proj / "descriptions",
                    dirs_exist_ok=True)
    env = dvc_env(tmp)
    # The stages run in-process (as the Prefect flow runs them: no interpreter start-up per
    # stage) and `dvc commit` records them in dvc.lock as `dvc repro` would have.
    import torch

    threads = torch.get_num_threads()
    try:
        run_stages(proj, ["world", "pretrain", "describe", "zeroshot"])
    finally:
        torch.set_num_threads(threads)
    r = subprocess.run(["dvc", "commit", "-f", "-d", "zeroshot"], cwd=proj, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return proj, env


def copy_project(src, dst):
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst
