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
