"""Artifacts shared between machines through a DVC remote (here a local folder, as a stand-in
for S3, GCS or SSH): one clone runs `dvc repro` and `dvc push`es; a second clone `dvc pull`s
and has nothing to run."""
import shutil
import subprocess

import pytest
import yaml

from tests.flow_helpers import ROOT, keep_stages, venv_env

pytestmark = pytest.mark.slow


def _run(args, cwd, env):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def test_push_then_pull_in_another_clone_leaves_nothing_to_run(tmp_path):
    from tests.conftest import tiny_params_dict

    env = venv_env(DVC_SITE_CACHE_DIR=tmp_path / "dvc-site-cache", GIT_AUTHOR_NAME="test",
                   GIT_COMMITTER_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
                   GIT_COMMITTER_EMAIL="test@example.com")
    first = tmp_path / "first"
    first.mkdir()
    for name in ("drm", "stages"):
        shutil.copytree(ROOT / name, first / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", first / "dvc.yaml")
    (first / "embedded").mkdir()
    shutil.copy(ROOT / "embedded" / "dvc.yaml", first / "embedded" / "dvc.yaml")
    (first / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    keep_stages(first, ["world"])  # one stage keeps it quick; any output travels the same way
    remote = tmp_path / "remote"
    _run(["git", "init", "-q"], first, env)
    _run(["dvc", "init", "-q"], first, env)
    _run(["dvc", "config", "core.analytics", "false"], first, env)
    _run(["dvc", "remote", "add", "-d", "store", str(remote)], first, env)
    _run(["git", "add", "-A"], first, env)
    _run(["git", "commit", "-qm", "tiny project"], first, env)  # (a stage with dvclive needs a commit)
    assert _ran(_run(["dvc", "repro"], first, env)) == {"world"}
    pushed = _run(["dvc", "push"], first, env)
    assert remote.is_dir() and any(p.is_file() for p in remote.rglob("*")), pushed
    _run(["git", "add", "-A"], first, env)
    _run(["git", "commit", "-qm", "world, pushed"], first, env)

    second = tmp_path / "second"  # another machine: a clone of the repository, then dvc pull
    _run(["git", "clone", "-q", str(first), str(second)], tmp_path, env)
    assert not (second / "data/world").exists()  # the artifacts are not in git
    _run(["dvc", "pull"], second, env)
    for name in ("train.parquet", "ood_test.parquet", "world.json"):
        assert (second / "data/world" / name).read_bytes() == (first / "data/world" / name).read_bytes()
    status = _run(["dvc", "status"], second, env)
    assert "up to date" in status, status
    out = _run(["dvc", "repro"], second, env)
    assert _ran(out) == set(), out  # nothing to run: every stage's inputs and outputs match dvc.lock
