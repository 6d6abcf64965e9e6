"""params.yaml is validated at the edge, with messages that name the key; each knob has one
default (its field), and a stage validates only the sections it reads."""
import pytest
import yaml

from drm.base.errors import ConfigError
from drm.params import load_params, parse_params


def test_repository_params_file_is_valid():
    p = load_params("params.yaml")
    assert {"erm", "drm", "distill"} <= set(p.finetune.methods)
    assert set(p.finetune.methods) <= set(p.methods)


def test_keys_left_out_get_the_repository_defaults():
    """A params file that leaves keys out (e.g. one written for real data) gets the values
    params.yaml documents, not other ones. (Which named method variants exist, and which run,
    is params.yaml's own choice: without `methods`, one method of each kind with its defaults.)"""
    from drm.params import Params

    code, repo = Params().model_dump(), load_params("params.yaml").model_dump()
    for section in set(code) - {"methods"}:
        if section == "finetune":
            code[section].pop("methods"), repo[section].pop("methods")
        assert code[section] == repo[section], section
    short = parse_params({"data": {"source": "imagefolder", "root": "data/mine"}})
    assert short.evaluate.beta == "val" and short.evaluate.beta_id_tolerance == 2.0
    assert set(short.finetune.methods) <= set(short.methods)


def test_a_method_default_is_its_field_default():
    """params.yaml writes only what differs: drm's lam comes from the DRM class."""
    from drm.finetune.methods import DRM

    assert load_params("params.yaml").methods["drm"].lam == DRM.model_fields["lam"].default


def test_a_stage_validates_only_its_sections(tmp_path):
    """A bad value in a section the stage does not read does not stop it; a misspelt section
    name does."""
    from drm.base.params import load
    from drm.report.stage import Params as ReportParams

    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"finetune": {"lr": -1}, "report": {"head": "cd"}}))
    assert load(f, ReportParams).report.head == "cd"
    f.write_text(yaml.safe_dump({"reprot": {"head": "cd"}}))
    with pytest.raises(ConfigError, match="reprot: unknown section"):
        load(f, ReportParams)


def test_runtime_settings_are_not_results(tmp_path, monkeypatch):
    from drm.base.params import load
    from drm.finetune.stage import Params as FinetuneParams

    assert "runtime" not in FinetuneParams.tracked()
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"runtime": {"device": "cpu", "num_workers": 2}}))
    monkeypatch.setenv("DRM_DEVICE", "cuda:1")
    assert load(f, FinetuneParams).runtime.device == "cuda:1"
    monkeypatch.setenv("DRM_DEVICE", "gpu")
    with pytest.raises(ConfigError, match="DRM_DEVICE"):
        load(f, FinetuneParams)


@pytest.mark.parametrize("raw, key, words", [
    ({"finetune": {"lr": -1}}, "finetune.lr", "greater than 0"),
    ({"finetune": {"epochs": "ten"}}, "finetune.epochs", "integer"),
    ({"finetune": {"epoch": 3}}, "finetune.epoch", "unknown key"),
    ({"evaluate": {"beta": 1.5}}, "evaluate", "must be in [0, 1] or 'val'"),
    ({"methods": {"drm": {"loss": "drm", "estimator": "magic"}}}, "methods.drm.estimator", "weighted"),
    ({"methods": {"x": {"loss": "sgd"}}, "finetune": {"methods": ["x"]}}, "methods.x.loss", "erm"),
    ({"world": {"contrast": [0.9, 0.1]}}, "world.contrast", "low <= high"),
    ({"wise": {"alphas": [0.0, 0.5]}}, "wise", "must include 1.0"),
    ({"runtime": {"device": "gpu"}}, "runtime.device", "cpu, cuda, cuda:N or mps"),
    ({"finetune": {"device": "cpu"}}, "finetune.device", "unknown key"),
    ({"evaluate": {"select_splits": ["id_val"]}}, "evaluate.select_splits", "at least 2"),
    ({"describe": {"provider": "openai", "openai": {"modle": "x"}}}, "describe.openai.modle",
     "docs/describe-openai.md"),
])
def test_bad_values_name_the_key(raw, key, words):
    with pytest.raises(ConfigError) as e:
        parse_params(raw)
    assert words in str(e.value)
    assert key.split(".")[0] in str(e.value)


def test_knobs_a_loss_ignores_are_rejected():
    with pytest.raises(ConfigError, match="no effect with loss 'erm'"):
        parse_params({"methods": {"erm": {"loss": "erm", "lam": 3}}})
    with pytest.raises(ConfigError, match=r"\['lp_c'\] have no effect with loss 'drm'.*lam"):
        parse_params({"methods": {"drm": {"loss": "drm", "lp_c": 2.0}}})


def test_unknown_method_in_run_list():
    with pytest.raises(ConfigError, match="not defined under 'methods'"):
        parse_params({"finetune": {"methods": ["erm", "flyp2"]}})


def test_unknown_describe_provider():
    with pytest.raises(ConfigError, match="describe.provider 'gpt' is unknown"):
        parse_params({"describe": {"provider": "gpt"}})


def test_load_params_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("seeds: [0,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump({"seeds": [3]}))
    assert load_params(ok).seeds == [3]


def test_temperature_only_where_it_sharpens_targets():
    parse_params({"methods": {"d": {"loss": "drm", "estimator": "soft", "temperature": 0.5},
                              "k": {"loss": "distill", "temperature": 0.5}}, "finetune": {"methods": ["d", "k"]}})
    with pytest.raises(ConfigError, match="only soft"):
        parse_params({"methods": {"d": {"loss": "drm", "estimator": "ratio", "temperature": 0.5}},
                      "finetune": {"methods": ["d"]}})
    with pytest.raises(ConfigError, match="no effect with loss 'erm'"):
        parse_params({"methods": {"erm": {"loss": "erm", "temperature": 0.5}}})


def test_finetune_stage_tracks_every_finetune_key_that_shapes_a_run():
    """dvc.yaml lists finetune's keys one by one (finetune.methods must not rerun every run):
    a new key missing there would leave stale runs after it changes."""
    from pathlib import Path

    import yaml

    from drm.finetune.config import FinetuneConfig

    stage = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]["finetune"]
    listed = {p.split(".", 1)[1] for p in stage["params"] if p.startswith("finetune.")}
    assert listed == set(FinetuneConfig.model_fields) - {"methods"}
