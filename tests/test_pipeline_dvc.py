"""The whole pipeline under a real `dvc repro`, on tiny parameters, in a temporary git repo:
artifacts exist, a second repro does nothing, beta reruns only evaluate+report, and the DRM
lambda reruns only DRM fine-tuning and what follows."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env(tmp):
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = str(tmp / "dvc-site-cache")
    env["DRM_NO_PROGRESS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.com"
    return env


def _run(args, cwd, env):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _ran(out: str) -> set[str]:
    """Stage names that `dvc repro` ran (not skipped); embedded/dvc.yaml:world is world."""
    return {line.split("'")[1].split(":")[-1] for line in out.splitlines() if line.startswith("Running stage")}


def git_project(tmp: Path, params: dict, files=("dvc.yaml", "embedded/dvc.yaml")):
    """A committed git + DVC project in tmp/proj with the code, `files` and `params`: (proj, env)."""
    proj = tmp / "proj"
    proj.mkdir()
    for name in ("drm", "stages", "descriptions"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in files:
        (proj / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, proj / name)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env(tmp)
    _run(["git", "init", "-q"], proj, env)
    _run(["dvc", "init", "-q"], proj, env)
    _run(["dvc", "config", "core.analytics", "false"], proj, env)
    _run(["dvc", "config", "core.check_update", "false"], proj, env)
    _run(["git", "add", "-A"], proj, env)
    _run(["git", "commit", "-qm", "tiny project"], proj, env)
    return proj, env


@pytest.fixture(scope="module")
def project(reproduced_git_project, tmp_path_factory):
    from tests.conftest import copy_git_project

    proj, env = copy_git_project(reproduced_git_project[0], tmp_path_factory.mktemp("dvcproj"))
    return proj, env, reproduced_git_project[1]


def test_repro_builds_every_artifact(project):
    proj, env, out = project
    assert {"world", "pretrain", "describe", "zeroshot", "finetune@erm-0", "finetune@drm-0", "finetune@lpft-0",
            "finetune@drm_flyp-0", "evaluate", "diagnostics", "report"} <= _ran(out)
    assert (proj / "models/pretrained/open_clip_model.safetensors").exists()
    desc = json.loads((proj / "data/descriptions.json").read_text())
    assert desc["provenance"]["provider"] == "world" and len(desc["classnames"]) == 8
    logits = pq.read_table(proj / "data/zeroshot/logits.parquet")
    assert set(logits.column("split").to_pylist()) == {"train", "id_val", "id_test", "ood_val", "ood_test"}
    assert logits.num_rows == 128 + 32 + 32 + 32 + 48
    core = pq.read_table(proj / "data/zeroshot/core.parquet")
    assert core.num_rows == 128 and {"weighted", "ratio"} <= set(core.column_names)
    for targets in ("core_soft.npy", "df_soft.npy"):  # the C-wide core estimates, [N, C] float32
        assert np.load(proj / "data/zeroshot" / targets, mmap_mode="r").shape == (128, 8)
    preds = pq.read_table(proj / "runs/drm-s0/predictions.parquet")
    assert sorted(set(preds.column("alpha").to_pylist())) == [1.0]  # alpha 0 is the zero-shot model
    frame = pd.read_csv(proj / "metrics/all.csv")
    zs = frame[frame.method == "zeroshot"].set_index(["split", "head"]).accuracy
    drm0 = frame[(frame.method == "drm") & (frame.alpha == 0.0)].set_index(["split", "head"]).accuracy
    assert drm0.sort_index().equals(zs.sort_index())
    metrics = json.loads((proj / "metrics/evaluate.json").read_text())
    assert {"zeroshot", "erm", "drm", "lpft"} <= set(metrics)
    lpft = json.loads((proj / "runs/lpft-s0/run.json").read_text())
    assert lpft["method_cfg"]["loss"] == "lpft"
    # DRM with the FLYP term trains the whole CLIP: its checkpoint holds the text tower
    from safetensors import safe_open

    with safe_open(str(proj / "runs/drm_flyp-s0/model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "clip.logit_scale" in keys and any(k.startswith("clip.transformer.") for k in keys)
    assert 0.0 <= metrics["drm"]["ood_test"]["dual"] <= 1.0
    report = (proj / "reports/report.md").read_text()
    assert "zero-shot" in report and "| erm |" in report and "| drm |" in report
    assert (proj / "reports/id_vs_ood.png").stat().st_size > 1000
    assert "Diagnostics" in report and (proj / "reports/diagnostics.json").exists()
    shown = _run(["dvc", "metrics", "show", "--json"], proj, env)
    assert "evaluate.json" in shown


def test_second_repro_does_nothing(project):
    proj, env, _ = project
    out = _run(["dvc", "repro"], proj, env)
    assert _ran(out) == set(), out


def test_beta_reruns_only_evaluate_and_report(project):
    proj, env, _ = project
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["evaluate"]["beta"] = 0.3
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], proj, env)
    assert _ran(out) == {"evaluate", "report"}, out


def test_lambda_reruns_only_drm_finetuning_and_later(project):
    proj, env, _ = project
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["methods"]["drm"]["lam"] = 2.0
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], proj, env)
    ran = _ran(out)
    # report reruns only if the metrics changed (on tiny data they may not): DVC's own call
    assert {"finetune@drm-0", "evaluate"} <= ran <= {"finetune@drm-0", "evaluate", "report"}, out
    run = json.loads((proj / "runs/drm-s0/run.json").read_text())
    assert run["method_cfg"]["lam"] == 2.0


def test_an_edited_description_file_reruns_describe(project):
    """describe.file / describe.overrides live in descriptions/, a DVC dependency of describe:
    editing one is seen (params only hold the path)."""
    proj, env, _ = project
    assert "describe" not in _run(["dvc", "status", "describe"], proj, env)
    over = proj / "descriptions" / "over.json"
    over.write_text(json.dumps({"circle": ["a round outline"]}))
    try:
        status = _run(["dvc", "status", "describe"], proj, env)
        assert "describe" in status and "descriptions" in status, status
    finally:
        over.unlink()
    assert "describe" not in _run(["dvc", "status", "describe"], proj, env)
