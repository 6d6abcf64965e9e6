"""ImageNet and its shifts, read from tiny trees in the real on-disk layouts (1000 wnid
folders, ImageNet-V2's index folders, ObjectNet's mapping files), and scored as the
benchmarks define them (R/A over their 200 classes, ObjectNet over its mapped class sets,
the OOD mean over the shifts)."""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from drm.base.params import DataConfig
from drm.evaluate.config import EvaluateConfig
from drm.datasets.registry import open_source
from drm.base.errors import ConfigError, DRMError

# ImageNet-1k's first and last wnids around made-up ones: the layout of the real train folder
WNIDS = ["n01440764"] + [f"n{1440765 + i:08d}" for i in range(998)] + ["n15075141"]


def _img(path: Path, color=(200, 10, 10), size=(12, 12), fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def _objectnet_mappings(root: Path):
    """The four mapping files ObjectNet 1.0 ships, for two mapped classes and one unmapped."""
    maps = root / "objectnet-1.0" / "mappings"
    maps.mkdir(parents=True)
    (maps / "folder_to_objectnet_label.json").write_text(json.dumps(
        {"alarm_clock": "Alarm clock", "banana": "Banana", "squeegee": "Squeegee"}))
    (maps / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Alarm clock": "analog clock; digital clock", "Banana": "banana"}))
    # pytorch index <- 2012 id: a permutation, so the two numberings differ as in the real file
    (maps / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): (i + 3) % 1000 for i in range(1000)}))
    names = [f"imagenet class {i}" for i in range(1000)]
    names[10], names[11], names[12] = "analog clock", "digital clock", "banana"  # 2012 ids 10, 11, 12
    (maps / "imagenet_to_label_2012_v2").write_text("\n".join(names) + "\n")
    # 2012 id k -> pytorch index k - 3: analog clock 7, digital clock 8, banana 9


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "inet"
    for w in WNIDS:
        (root / "imagenet" / "train" / w).mkdir(parents=True)
    for c in (0, 1, 2):
        for k in range(30):
            _img(root / "imagenet" / "train" / WNIDS[c] / f"{WNIDS[c]}_{k}.JPEG", (10 * k, c * 60, 0))
        _img(root / "imagenet" / "val" / WNIDS[c] / f"ILSVRC2012_val_{c:08d}.JPEG")
    _img(root / "imagenetv2-matched-frequency-format-val" / "2" / "a.jpeg")
    _img(root / "imagenetv2-matched-frequency-format-val" / "999" / "b.jpeg")
    for c in (1, 5):
        _img(root / "imagenet-r" / WNIDS[c] / "art_0.jpg")
    _img(root / "imagenet-a" / WNIDS[2] / "0.jpg")
    _img(root / "imagenet-a" / WNIDS[3] / "1.jpg")
    _img(root / "sketch" / WNIDS[0] / "sketch_0.JPEG")
    _objectnet_mappings(root)
    _img(root / "objectnet-1.0" / "images" / "alarm_clock" / "x.png", size=(20, 16), fmt="PNG")
    _img(root / "objectnet-1.0" / "images" / "banana" / "y.png", fmt="PNG")
    _img(root / "objectnet-1.0" / "images" / "squeegee" / "z.png", fmt="PNG")
    return root


def test_layout_splits_labels_and_class_names(tree):
    src = open_source(DataConfig(source="imagenet", root=str(tree)))
    assert src.splits == {"train": "train", "id_val": "id", "id_test": "id", "ood_imagenet_v2": "ood",
                          "ood_imagenet_r": "ood", "ood_imagenet_a": "ood", "ood_imagenet_sketch": "ood",
                          "ood_objectnet": "ood"}
    assert src.classnames[:2] == ["tench", "goldfish"]  # open_clip's ImageNet names, wnid order
    assert len(set(src.classnames)) == 1000  # its two repeated names made distinct
    assert (src.classnames[657], src.classnames[744]) == ("missile", "projectile")
    train, val = src.load("train"), src.load("id_val")
    assert len(train.meta) + len(val.meta) == 90 and len(val.meta) >= 1
    assert not set(train.meta.id) & set(val.meta.id)
    assert src.load("id_val").meta.id.tolist() == val.meta.id.tolist()  # the same held-out set again
    assert src.load("ood_imagenet_v2").meta.y.tolist() == [2, 999]  # folder = class index
    assert sorted(src.load("ood_imagenet_r").meta.y) == [1, 5]
    assert src.load("id_test").meta.y.tolist() == [0, 1, 2]
    img, y = src.load("ood_imagenet_sketch", transform=lambda im: torch.tensor(im.size)).dataset[0]
    assert y == 0 and img.tolist() == [12, 12]


def test_objectnet_mapping_crop_and_exclusions(tree):
    src = open_source(DataConfig(source="imagenet", root=str(tree)))
    assert src.objectnet == {"alarm_clock": [7, 8], "banana": [9]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = src.load("ood_objectnet", transform=lambda im: im.size)
    assert split.meta.y.tolist() == [7, 9]  # canonical index of each ObjectNet class
    assert src.excluded == {"ood_objectnet": 1}  # the squeegee: no ImageNet counterpart
    assert any("left out" in str(w.message) for w in caught)
    assert split.dataset[0][0] == (16, 12)  # 2-pixel border cropped off the 20x16 image
    mask = src.class_mask("ood_objectnet")
    assert mask.sum() == 3 and mask[[7, 8, 9]].all()
    assert src.project_predictions("ood_objectnet", np.array([8, 7, 9, 3])).tolist() == [7, 7, 9, 3]


def test_scoring_masks_projects_and_averages(tree):
    from drm.evaluate.run import add_ood_mean, evaluate_table
    from drm.base.tables import logits_table

    src = open_source(DataConfig(source="imagenet", root=str(tree)))
    cfg = EvaluateConfig(beta=0.5, group_by=["domain"])
    rows = []
    # ImageNet-R: the true class (1 or 5) is second best overall, best among R's 200 classes
    r = src.load("ood_imagenet_r").meta
    logits = torch.zeros(len(r), 1000)
    logits[:, 0] = 9.0  # class 0 is not an ImageNet-R class
    logits[torch.arange(len(r)), torch.tensor(r.y.tolist())] = 5.0
    rows += evaluate_table(logits_table("ood_imagenet_r", r, logits, logits), "m", 0, 1.0, src,
                           {"ood_imagenet_r": r}, cfg)
    # ObjectNet: predicting the clock's other ImageNet class counts as the clock
    o = src.load("ood_objectnet").meta
    logits = torch.zeros(len(o), 1000)
    logits[0, 8], logits[1, 9] = 5.0, 5.0
    rows += evaluate_table(logits_table("ood_objectnet", o, logits, logits), "m", 0, 1.0, src,
                           {"ood_objectnet": o}, cfg)
    # ImageNet-A (classes 2, 3): class 1 is best overall but not an A class; then class 3
    a = src.load("ood_imagenet_a").meta
    logits = torch.zeros(len(a), 1000)
    logits[:, 1], logits[:, 3] = 5.0, 1.0
    rows += evaluate_table(logits_table("ood_imagenet_a", a, logits, logits), "m", 0, 1.0, src,
                           {"ood_imagenet_a": a}, cfg)
    frame = pd.DataFrame(rows)
    acc = frame[frame["head"] == "dual"].set_index("split").accuracy
    assert acc["ood_imagenet_r"] == 1.0 and acc["ood_objectnet"] == 1.0 and acc["ood_imagenet_a"] == 0.5
    both = add_ood_mean(frame, ["ood_imagenet_r", "ood_objectnet", "ood_imagenet_a"])
    mean = both[(both.split == "ood_mean") & (both["head"] == "dual")]
    assert len(mean) == 1 and mean.accuracy.iloc[0] == pytest.approx(2.5 / 3)
    assert mean.role.iloc[0] == "ood"


def test_layout_errors_say_what_to_do(tmp_path, tree):
    with pytest.raises(DRMError, match="imagenet/train"):
        open_source(DataConfig(source="imagenet", root=str(tmp_path / "nowhere")))
    (tree / "objectnet-1.0" / "mappings" / "objectnet_to_imagenet_1k.json").unlink()
    with pytest.raises(DRMError, match="mapping files"):
        open_source(DataConfig(source="imagenet", root=str(tree)))


def test_a_class_subset_needs_names_or_warns(tmp_path):
    root = tmp_path / "sub"
    for w in WNIDS[:3]:
        _img(root / "imagenet" / "train" / w / "a.JPEG")
    with pytest.warns(UserWarning, match="wnids"):
        src = open_source(DataConfig(source="imagenet", root=str(root)))
    assert src.classnames == WNIDS[:3]
    (root / "imagenet" / "classnames.json").write_text(json.dumps({w: f"thing {i}" for i, w in enumerate(WNIDS[:3])}))
    assert open_source(DataConfig(source="imagenet", root=str(root))).classnames == ["thing 0", "thing 1", "thing 2"]
    _img(root / "imagenetv2-matched-frequency-format-val" / "0" / "a.jpeg")
    with pytest.raises(ConfigError, match="ImageNet-V2"):
        open_source(DataConfig(source="imagenet", root=str(root)))


@pytest.mark.slow
def test_stages_run_end_to_end_on_the_imagenet_layout(tree, tmp_path):
    """describe (file) -> zeroshot -> finetune (erm, drm) -> evaluate -> report on the tiny
    tree, with a small randomly initialised open_clip model folder standing in for real weights."""
    import yaml

    from drm.base.clip import build_clip, save_model_folder
    from drm.pretrain.config import PretrainConfig
    from tests.conftest import make_project, run_stages

    base = tmp_path / "proj"
    (base / "descriptions").mkdir(parents=True)
    (base / "descriptions" / "inet.json").write_text(json.dumps({str(i): f"a thing of kind {i}" for i in range(1000)}))
    arch = PretrainConfig().arch
    torch.manual_seed(0)
    save_model_folder(build_clip(arch), arch, base / "models" / "pretrained", 32)
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw.update({"seeds": [0], "wise": {"alphas": [0.0, 1.0]}})
    raw["data"] = {"source": "imagenet", "root": str(tree)}
    raw["describe"] = {"provider": "file", "file": "descriptions/inet.json"}
    raw["zeroshot"]["templates"] = ["a photo of a {c}."]
    raw["finetune"].update({"methods": ["erm", "drm"], "epochs": 1, "batch_size": 32, "warmup_steps": 1})
    raw["evaluate"].update({"beta": 0.5, "group_by": ["domain"]})
    raw["report"].update({"id_split": "id_test", "ood_split": "ood_mean", "comparisons": [["drm", "erm"]]})
    make_project(base, raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ObjectNet's left-out class is tested above
        run_stages(base, ["describe", "zeroshot", "finetune@erm-0", "finetune@drm-0", "evaluate", "report"])
    frame = pd.read_csv(base / "metrics" / "all.csv")
    shifts = ["ood_imagenet_v2", "ood_imagenet_r", "ood_imagenet_a", "ood_imagenet_sketch", "ood_objectnet"]
    assert set(shifts + ["id_test", "id_val", "ood_mean"]) <= set(frame.split)
    for method in ("zeroshot", "erm", "drm"):
        sub = frame[(frame.method == method) & (frame["head"] == "dual") & (frame.alpha == frame.alpha.max() if method != "zeroshot" else True)]
        per_seed = sub[sub.split.isin(shifts)].groupby(["seed", "alpha"]).accuracy.mean()
        mean = sub[sub.split == "ood_mean"].set_index(["seed", "alpha"]).accuracy
        assert np.allclose(per_seed.sort_index().to_numpy(), mean.sort_index().to_numpy())
    assert "ood_mean" in (base / "reports" / "report.md").read_text()


def test_layout_is_checked_when_the_source_opens(tree):
    """Layout mistakes fail at open (seconds), not after a pass over 1.28M training images."""
    import shutil

    cfg = DataConfig(source="imagenet", root=str(tree))
    stray = tree / "objectnet-1.0" / "images" / "not_a_class"
    _img(stray / "q.png", fmt="PNG")
    with pytest.raises(ConfigError, match="not_a_class"):
        open_source(cfg)
    shutil.rmtree(stray)
    _img(tree / "imagenet" / "val" / "ILSVRC2012_val_00000009.JPEG")  # an unsorted val image
    with pytest.raises(ConfigError, match="sorted into <wnid>/"):
        open_source(cfg)
    (tree / "imagenet" / "val" / "ILSVRC2012_val_00000009.JPEG").unlink()
    _img(tree / "imagenetv2-matched-frequency-format-val" / "cat" / "c.jpeg")
    with pytest.raises(ConfigError, match="named 0..999"):
        open_source(cfg)
    shutil.rmtree(tree / "imagenetv2-matched-frequency-format-val" / "cat")
    maps = tree / "objectnet-1.0" / "mappings" / "objectnet_to_imagenet_1k.json"
    maps.write_text(json.dumps({"Alarm clock": "analog clock; banana", "Banana": "banana"}))
    with pytest.raises(ConfigError, match="disjoint"):
        open_source(cfg)


def test_ood_mean_keeps_a_missing_metric_missing():
    from drm.evaluate.run import add_ood_mean

    rows = [{"method": "m", "seed": 0, "alpha": 1.0, "head": "dual", "split": s, "role": "ood", "beta": 0.5,
             "accuracy": a, "bench_x": b} for s, a, b in (("o1", 0.2, 1.0), ("o2", 0.4, float("nan")))]
    out = add_ood_mean(pd.DataFrame(rows), ["o1", "o2"])
    mean = out[out.split == "ood_mean"].iloc[0]
    assert mean.accuracy == pytest.approx(0.3) and np.isnan(mean.bench_x) and mean.beta == 0.5
    with pytest.raises(DRMError, match="rerun its finetune"):
        add_ood_mean(pd.DataFrame(rows[:1]), ["o1", "o2"])
