"""params.yaml is validated once, at load, with messages that name the key."""
import pytest
import yaml

from drm.config import load_params, parse_params
from drm.errors import ConfigError


def test_repository_params_file_is_valid():
    p = load_params("params.yaml")
    assert {"erm", "drm", "distill"} <= set(p.finetune.methods)
    assert set(p.finetune.methods) <= set(p.methods)


def test_keys_left_out_get_the_repository_defaults():
    """A params file that leaves keys out (e.g. one written for real data) gets the values
    params.yaml documents, not other ones."""
    from drm.config import Params

    assert Params().model_dump() == load_params("params.yaml").model_dump()
    short = parse_params({"data": {"source": "imagefolder", "root": "data/mine"}})
    assert short.evaluate.beta == "val" and short.evaluate.beta_id_tolerance == 2.0
    assert set(short.finetune.methods) <= set(short.methods)


@pytest.mark.parametrize("raw, key, words", [
    ({"finetune": {"lr": -1}}, "finetune.lr", "greater than 0"),
    ({"finetune": {"epochs": "ten"}}, "finetune.epochs", "integer"),
    ({"finetune": {"epoch": 3}}, "finetune.epoch", "unknown key"),
    ({"evaluate": {"beta": 1.5}}, "evaluate", "must be in [0, 1] or 'val'"),
    ({"methods": {"drm": {"loss": "drm", "estimator": "magic"}}}, "methods.drm.estimator", "weighted"),
    ({"methods": {"x": {"loss": "sgd"}}, "finetune": {"methods": ["x"]}}, "methods.x.loss", "erm"),
    ({"world": {"contrast": [0.9, 0.1]}}, "world.contrast", "low <= high"),
    ({"wise": {"alphas": [0.0, 0.5]}}, "wise", "must include 1.0"),
    ({"finetune": {"device": "gpu"}}, "finetune.device", "cpu, cuda, cuda:N or mps"),
    ({"zeroshot": {"device": "cuda:x"}}, "zeroshot.device", "cpu, cuda, cuda:N or mps"),
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
