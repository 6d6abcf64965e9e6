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
    """A project folder the pipeline runs in: dvc.yaml, the stage scripts, params.yaml (as
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
    shutil.copytree(root / "stages", path / "stages", ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    if code:
        shutil.copytree(root / "drm", path / "drm", ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (path / ".dvc").exists():
        dvc = Path(sys.executable).parent / "dvc"
        subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=path, check=True)
    return path


def run_stages(project, names):
    """Run the named dvc.yaml stages in-process, in order, as the Prefect flow does."""
    from pipeline.flow import load_stages, run_stage_script

    stages = {s.name: s for s in load_stages(str(project))}
    return [run_stage_script(str(project), stages[n]) for n in names]
