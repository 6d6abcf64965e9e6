"""The embedded world: deterministic, with the split design the method needs."""
import numpy as np
import pytest

from drm.world.config import WorldConfig
from drm.world.source import WorldSource
from drm.world.render import CLASSNAMES, STYLES, generate

SMALL = dict(n_pretrain=64, n_train=400, n_id_val=16, n_id_test=16, n_ood_val=16, n_ood_test=200)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate(WorldConfig(**SMALL), out, progress=False)
    return out


def test_same_seed_same_bytes(world, tmp_path):
    generate(WorldConfig(**SMALL), tmp_path, progress=False)
    for split in ("train", "ood_test", "pretrain"):
        assert (world / f"{split}.parquet").read_bytes() == (tmp_path / f"{split}.parquet").read_bytes()


def test_other_seed_other_images(world, tmp_path):
    generate(WorldConfig(**SMALL, seed=1), tmp_path, progress=False)
    assert (world / "train.parquet").read_bytes() != (tmp_path / "train.parquet").read_bytes()


def test_split_design(world):
    src = WorldSource.open(world)
    assert src.classnames == CLASSNAMES and src.core_traits
    train = src.load("train").meta
    ood = src.load("ood_test").meta
    assert set(train["style"]) == {"filled"}
    assert "filled" not in set(ood["style"]) and set(ood["style"]) <= set(STYLES)
    rate = WorldConfig().spurious_rate  # binomial: 400 samples, 4 standard deviations
    assert abs(train["bg_match"].mean() - rate) < 4 * (rate * (1 - rate) / 400) ** 0.5 + 1e-9
    assert ood["bg_match"].mean() < 0.35  # independent backgrounds
    assert train["id"].is_unique and {"style", "bg", "clarity"} <= set(train.columns)
    assert set(train["clarity"]) == {"clear", "small", "faint"}
    pre = src.load("pretrain").meta
    assert "caption" in pre and pre["caption"].str.len().gt(0).all()
    assert not any(c in cap for cap in pre["caption"] for c in ("red", "green", "blue", "gray"))


def test_dataset_items_are_images_with_labels(world):
    src = WorldSource.open(world)
    split = src.load("id_val", transform=lambda im: np.asarray(im))
    x, y = split.dataset[3]
    assert x.shape == (32, 32, 3) and x.dtype == np.uint8
    assert y == split.meta["y"].iloc[3]
