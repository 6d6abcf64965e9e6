"""Bad inputs fail with one clear line that says what to do (stage scripts exit with 2)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from drm.base.errors import DRMError, MissingArtifactError

ROOT = Path(__file__).resolve().parents[1]


def stage(name, *args, cwd, params=None):
    """Run a stage script as dvc.yaml's command does (its paths), plus `args`, in a project."""
    from pipeline.flow import load_stages
    from tests.conftest import make_project

    make_project(cwd, params if params is not None else yaml.safe_load((ROOT / "params.yaml").read_text()))
    spec = next(s for s in load_stages(str(cwd)) if s.name == name)
    argv = list(spec.argv)
    for flag, value in zip(args[::2], args[1::2]):  # replace or add --flag value
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return subprocess.run([sys.executable, str(ROOT / spec.script), *argv],
                          cwd=cwd, capture_output=True, text=True)


def test_missing_upstream_artifact_names_the_stage(tmp_path):
    r = stage("zeroshot", cwd=tmp_path)
    assert r.returncode == 2
    assert "run the 'world' stage first" in r.stderr and "Traceback" not in r.stderr


def test_unknown_method_on_the_command_line(tmp_path):
    r = stage("finetune@erm-0", "--method", "sgd", cwd=tmp_path)
    assert r.returncode == 2 and "unknown method 'sgd'" in r.stderr


def test_invalid_params_fail_before_any_work(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["evaluate"]["beta"] = 2
    r = stage("evaluate", cwd=tmp_path, params=params)
    assert r.returncode == 2 and "evaluate.beta" in r.stderr


def test_model_folder_without_weights_refuses_random_init(tmp_path):
    from drm.base.clip import build_clip, load_pretrained, save_model_folder
    from drm.pretrain.config import PretrainConfig

    arch = PretrainConfig().arch
    torch.manual_seed(0)
    model = build_clip(arch)
    folder = save_model_folder(model, arch, tmp_path / "m", 32)
    loaded, _, _, tok = load_pretrained(f"local-dir:{folder}")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(DRMError, match="no weights") as err:
        load_pretrained(f"local-dir:{folder}")
    assert "stage" not in str(err.value)  # a user's own folder: no stage writes it
    with pytest.raises(DRMError, match="needs open_clip_config.json") as err:
        load_pretrained(f"local-dir:{tmp_path / 'absent'}")
    assert "stage" not in str(err.value)
    # the pretrain stage's own output folder names the stage to run
    with pytest.raises(MissingArtifactError, match="'pretrain' stage"):
        load_pretrained("local-dir:models/pretrained", base_dir=tmp_path)


def test_evaluate_names_missing_run(tmp_path):
    from drm.evaluate.config import EvaluateConfig
    from drm.evaluate.run import run_evaluate

    class Src:
        splits = {"train": "train"}
        group_columns = []

        def load(self, s):
            raise AssertionError

    zs = tmp_path / "zs"
    zs.mkdir()
    with pytest.raises(MissingArtifactError, match="zeroshot"):
        run_evaluate(Src(), zs, {}, EvaluateConfig(group_by=[], beta=0.5), tmp_path / "a.csv", tmp_path / "a.json")


def test_evaluate_refuses_predictions_that_do_not_match_the_data(tmp_path):
    import pandas as pd

    from drm.evaluate.config import EvaluateConfig
    from drm.evaluate.run import evaluate_table
    from drm.base.tables import logits_table

    from drm.datasets.base import DataSource

    def Src():
        return DataSource(root=tmp_path, splits={"id_val": "id"})

    meta = pd.DataFrame({"id": ["a", "b"], "y": [0, 1]})
    stale = pd.DataFrame({"id": ["a", "zz"], "y": [0, 1]})
    table = logits_table("id_val", stale, torch.eye(2), torch.eye(2))
    with pytest.raises(DRMError, match="data changed"):
        evaluate_table(table, "erm", 0, 1.0, Src(), {"id_val": meta}, EvaluateConfig(group_by=[], beta=0.5))
    other = logits_table("ood_x", meta, torch.eye(2), torch.eye(2))
    with pytest.raises(DRMError, match="does not have"):
        evaluate_table(other, "erm", 0, 1.0, Src(), {"id_val": meta}, EvaluateConfig(group_by=[], beta=0.5))
    # aligned by id even when the order differs
    swapped = logits_table("id_val", meta.iloc[::-1].reset_index(drop=True), torch.eye(2), torch.eye(2))
    rows = evaluate_table(swapped, "erm", 0, 1.0, Src(), {"id_val": meta}, EvaluateConfig(group_by=[], beta=0.5))
    assert len(rows) == 3


def test_report_names_missing_split(tmp_path):
    import pandas as pd

    from drm.report.config import ReportConfig
    from drm.base.errors import ConfigError
    from drm.report.run import run_report

    pd.DataFrame([{"method": "zeroshot", "seed": -1, "alpha": 0.0, "split": "id_val", "head": "dual",
                   "accuracy": 0.9}]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ConfigError, match="id_test"):
        run_report(tmp_path / "m.csv", ReportConfig(), tmp_path / "r.md", tmp_path / "r.png")


def test_params_that_do_not_fit_the_data_fail_before_training(tmp_path):
    """group_by / select_splits / report splits naming what the data lacks stop the zeroshot
    stage (the first that reads the data with a model) at once, not the evaluate stage after
    every run has trained."""
    from tests.conftest import tiny_params_dict

    params = tiny_params_dict()
    assert stage("world", cwd=tmp_path, params=params).returncode == 0
    params["evaluate"]["group_by"] = ["location"]
    params["report"]["ood_split"] = "test"
    r = stage("zeroshot", cwd=tmp_path, params=params)
    assert r.returncode == 2, r.stderr
    assert "evaluate.group_by names ['location']" in r.stderr and "clarity" in r.stderr
    assert "report.id_split/ood_split name ['test']" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "zeroshot").exists()
