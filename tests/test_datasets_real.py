"""Real-format data sources: ImageFolderSource, and the WILDS sources over small fakes
written in the on-disk formats the real wilds 2.0.0 classes read."""
from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader
from torchvision import transforms

from drm.datasets.folder import ImageFolderSource
from drm.base.errors import ConfigError, DRMError

TF = transforms.Compose([transforms.Resize((8, 8)), transforms.ToTensor()])


def _png(path, color, size=(12, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def _color(y):
    return (40 + 60 * (y % 4), 200 - 40 * (y % 5), 17 * (y % 13))


def _check_split(split, n_classes, group_columns):
    meta = split.meta
    assert list(meta.columns[:2]) == ["id", "y"]
    assert all(c in meta.columns for c in group_columns)
    assert meta["id"].is_unique and len(meta) == len(split.dataset) > 0
    assert meta["y"].between(0, n_classes - 1).all()
    for i in range(len(meta)):
        x, y = split.dataset[i]
        assert isinstance(x, torch.Tensor) and x.shape == (3, 8, 8)
        assert y == meta["y"].iloc[i]


def _loader_check(split):
    pickle.loads(pickle.dumps(split.dataset))  # spawn-started workers need this
    batches = list(DataLoader(split.dataset, batch_size=2, num_workers=2))
    ys = torch.cat([b[1] for b in batches])
    assert ys.tolist() == split.meta["y"].tolist()
    assert batches[0][0].shape[1:] == (3, 8, 8)


# ------------------------------------------------------------------ image folder
@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "imgs"
    layout = {"train": {"cat": 3, "dog": 2, "zebra_fish": 1}, "id_val": {"cat": 1, "dog": 1},
              "ood_test": {"cat": 1, "zebra_fish": 2}, "test": {"dog": 1}}
    for split, classes in layout.items():
        for c, n in classes.items():
            y = sorted(layout["train"]).index(c)
            for k in range(n):
                ext = ".png" if k % 2 == 0 else ".JPG"
                _png(root / split / c / f"img{k}{ext}", _color(y), fmt="PNG" if ext == ".png" else "JPEG")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("ignored")
    (root / "classnames.json").write_text(json.dumps({"zebra_fish": "zebrafish"}))
    return root


def test_imagefolder_loads(folder_root):
    src = ImageFolderSource.open(folder_root)
    assert src.classnames == ["cat", "dog", "zebrafish"]
    assert src.splits == {"train": "train", "id_val": "id", "ood_test": "ood", "test": "id"}
    assert src.group_columns == ["domain"]
    for name in src.splits:
        split = src.load(name, TF)
        assert split.role == src.splits[name]
        _check_split(split, 3, ["domain"])
        assert (split.meta["domain"] == name).all()
        assert all(i.startswith(f"{name}/") for i in split.meta["id"])
    train = src.load("train", TF)
    assert train.meta["y"].tolist() == [0, 0, 0, 1, 1, 2]
    assert "train/zebra_fish/img0.png" in set(train.meta["id"])
    again = ImageFolderSource.open(folder_root).load("train")
    assert again.meta["id"].tolist() == train.meta["id"].tolist()  # stable ids
    # label -> colour, so the pixels really come from the right file
    x, y = train.dataset[5]
    assert y == 2 and abs(float(x[0].mean()) - _color(2)[0] / 255) < 0.02
    _loader_check(train)
    m = src.benchmark_metrics("train", train.meta, train.meta["y"].to_numpy())
    assert m == {"accuracy": 1.0}


def test_imagefolder_errors(folder_root, tmp_path):
    _png(folder_root / "ood_test" / "horse" / "a.png", (1, 2, 3))
    with pytest.raises(ConfigError, match="horse"):
        ImageFolderSource.open(folder_root)
    with pytest.raises(DRMError, match="not found"):
        ImageFolderSource.open(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    _png(bad / "train" / "a" / "x.png", (0, 0, 0))
    _png(bad / "holdout" / "a" / "x.png", (0, 0, 0))
    with pytest.raises(ConfigError, match="holdout"):
        ImageFolderSource.open(bad)
    (bad / "holdout" / "a" / "x.png").unlink()
    (bad / "holdout" / "a").rmdir()
    (bad / "holdout").rmdir()
    (bad / "classnames.json").write_text(json.dumps({"b": "bee"}))
    with pytest.raises(ConfigError, match="'b'"):
        ImageFolderSource.open(bad)
    (bad / "classnames.json").unlink()
    with pytest.raises(ConfigError, match="not in this data source"):
        ImageFolderSource.open(bad).load("ood_test")


# ------------------------------------------------------------------ WILDS fakes
IWC_ROWS = [  # split, y, location
    ("train", 0, 0), ("train", 1, 1), ("train", 2, 0),
    ("id_val", 1, 1), ("id_test", 0, 0), ("id_test", 1, 1), ("id_test", 1, 0),
    ("val", 2, 2), ("test", 0, 3), ("test", 2, 3),
]


def write_iwildcam(root, rows=IWC_ROWS, categories=None, images=True):
    d = root / "iwildcam_v2.0"
    (d / "train").mkdir(parents=True)
    (d / "RELEASE_v2.0.txt").write_text("v2.0 fake")
    recs = []
    for i, (split, y, loc) in enumerate(rows):
        fn = f"{i:08x}-fake.jpg"
        recs.append({"split": split, "filename": fn, "y": y, "location_remapped": loc, "sequence_remapped": i,
                     "datetime": f"2013-0{1 + i % 9}-1{i % 10} 0{i % 10}:15:3{i % 10}.000"})
        if images:
            _png(d / "train" / fn, _color(y), fmt="JPEG")
    pd.DataFrame(recs).to_csv(d / "metadata.csv", index=False)
    if categories is None:
        categories = [(0, 0, "empty"), (1, 2, "tayassu pecari"), (2, 3, "dasyprocta punctata"),
                      (99999, 243, "didelphis sp")]
    pd.DataFrame(categories, columns=["y", "category_id", "name"]).to_csv(d / "categories.csv", index=False)
    return root


FMOW_ROWS = [  # split, timestamp, country, category -> wilds split
    ("train", "2002-03-04T10:00:00Z", "USA", "airport"),  # train
    ("train", "2011-05-06T11:30:00Z", "FRA", "barn"),  # train
    ("seq", "2012-01-01T00:00:00Z", "USA", "dam"),  # sequestered: dropped by wilds
    ("val", "2012-07-08T09:00:00Z", "KEN", "barn"),  # id_val
    ("test", "2011-02-03T04:05:06Z", "FRA", "airport"),  # id_test
    ("val", "2014-06-07T08:09:10Z", "USA", "dam"),  # val (OOD)
    ("test", "2016-01-02T03:04:05Z", "USA", "airport"),  # test (OOD)
    ("test", "2017-04-05T06:07:08Z", "USA", "barn"),
    ("test", "2016-09-10T11:12:13Z", "FRA", "dam"),
    ("test", "2017-10-11T12:13:14Z", "XXX", "airport"),  # region "Other"
]


def write_fmow(root, rows=FMOW_ROWS):
    d = root / "fmow_v1.1"
    (d / "images").mkdir(parents=True)
    (d / "RELEASE_v1.1.txt").write_text("v1.1 fake")
    pd.DataFrame(rows, columns=["split", "timestamp", "country_code", "category"]).to_csv(
        d / "rgb_metadata.csv", index=False)
    pd.DataFrame({"alpha-3": ["USA", "FRA", "KEN", "JPN"], "region": ["Americas", "Europe", "Africa", "Asia"]}
                 ).to_csv(d / "country_code_mapping.csv", index=False)
    from wilds.datasets.fmow_dataset import categories

    for i, row in enumerate(rows):
        _png(d / "images" / f"rgb_img_{i}.png", _color(categories.index(row[3])))
    return root


@pytest.fixture(scope="module")
def wilds_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wilds")
    write_iwildcam(root)
    write_fmow(root)
    return root


def test_iwildcam_loads_and_evaluates(wilds_root):
    from drm.datasets.wilds_data import IWildCamSource

    src = IWildCamSource.open(wilds_root)
    assert src.classnames == ["empty", "tayassu pecari", "dasyprocta punctata"]  # 3 classes: categories.csv
    assert src.splits == {"train": "train", "id_val": "id", "id_test": "id", "ood_val": "ood", "ood_test": "ood"}
    assert src.group_columns == ["location"] and src.headline == "F1-macro_all"
    expect = {"train": "train", "id_val": "id_val", "id_test": "id_test", "ood_val": "val", "ood_test": "test"}
    seen = []
    for name, wname in expect.items():
        split = src.load(name, TF)
        _check_split(split, 3, ["location"])
        rows = [(i, r) for i, r in enumerate(IWC_ROWS) if r[0] == wname]
        assert split.meta["id"].tolist() == [f"{i:08x}-fake.jpg" for i, _ in rows]
        assert split.meta["y"].tolist() == [r[1] for _, r in rows]
        assert split.meta["location"].tolist() == [r[2] for _, r in rows]
        x, y = split.dataset[0]
        assert abs(float(x[0].mean()) - _color(y)[0] / 255) < 0.03
        seen += split.meta["id"].tolist()
    assert len(seen) == len(set(seen)) == len(IWC_ROWS)
    # stable ids across opens
    assert IWildCamSource.open(wilds_root / "iwildcam_v2.0").load("id_test").meta["id"].tolist() == \
        src.load("id_test").meta["id"].tolist()

    split = src.load("id_test", TF)
    _loader_check(split)
    y_pred = np.array([0, 1, 2])  # true [0, 1, 1]; class 2 absent from the truth
    m = src.benchmark_metrics("id_test", split.meta, y_pred)
    direct = f1_score(split.meta["y"], y_pred, average="macro", labels=np.unique(split.meta["y"]))
    assert m["F1-macro_all"] == pytest.approx(direct)
    assert m["acc_avg"] == pytest.approx(2 / 3)
    assert all(isinstance(v, float) for v in m.values())
    # logits work too, and a reordered subset of rows is matched by id
    logits = np.eye(3)[y_pred]
    assert src.benchmark_metrics("id_test", split.meta, logits) == m
    sub = split.meta.iloc[[2, 0]]
    m2 = src.benchmark_metrics("id_test", sub, np.array([1, 0]))
    assert m2["F1-macro_all"] == pytest.approx(1.0)


def test_iwildcam_classnames(tmp_path):
    from drm.datasets.wilds_data import IWildCamSource

    latin = [f"genus{i} species{i}" for i in range(182)]
    rows = [("train", y, 0) for y in range(182)]
    cats = [(y, y, name) for y, name in enumerate(latin)]
    b = write_iwildcam(tmp_path / "b", rows, categories=cats, images=False)
    # without an override: categories.csv's (Latin) names, in label order, with a warning
    with pytest.warns(UserWarning, match="Latin"):
        src = IWildCamSource.open(b)
    assert src.classnames == latin
    # the params-free override
    (b / "classnames.json").write_text(json.dumps([f"animal {i}" for i in range(182)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert IWildCamSource.open(b).classnames[181] == "animal 181"
    (b / "classnames.json").write_text(json.dumps(["too", "few"]))
    with pytest.raises(DRMError, match="182 classes"):
        IWildCamSource.open(b)


def test_fmow_loads_and_evaluates(wilds_root):
    from drm.datasets.wilds_data import FMoWSource
    from wilds.datasets.fmow_dataset import categories

    src = FMoWSource.open(wilds_root)
    assert len(src.classnames) == 62 and src.classnames[1] == "airport hangar"
    assert src.classnames[30] == "multi-unit residential"
    assert src.group_columns == ["region", "year"] and src.headline == "acc_worst_region"
    expect = {"train": [0, 1], "id_val": [3], "id_test": [4], "ood_val": [5], "ood_test": [6, 7, 8, 9]}
    for name, rows in expect.items():
        split = src.load(name, TF)
        _check_split(split, 62, ["region", "year"])
        assert split.meta["id"].tolist() == [f"rgb_img_{r}" for r in rows]
        assert split.meta["y"].tolist() == [categories.index(FMOW_ROWS[r][3]) for r in rows]
        assert split.meta["year"].tolist() == [int(FMOW_ROWS[r][1][:4]) for r in rows]
        region = {"USA": "Americas", "FRA": "Europe", "KEN": "Africa"}
        assert split.meta["region"].tolist() == [region.get(FMOW_ROWS[r][2], "Other") for r in rows]
        for i in range(len(split.meta)):  # the image after the sequestered row is rgb_img_3, not _2
            x, y = split.dataset[i]
            assert abs(float(x[0].mean()) - _color(y)[0] / 255) < 0.02

    split = src.load("ood_test", TF)
    _loader_check(split)
    y_true = split.meta["y"].to_numpy()
    y_pred = y_true.copy()
    y_pred[1] = (y_pred[1] + 1) % 62  # one wrong in Americas -> 1/2
    y_pred[3] = (y_pred[3] + 1) % 62  # wrong in "Other": ignored by the worst-region metric
    m = src.benchmark_metrics("ood_test", split.meta, y_pred)
    meta = split.meta.assign(ok=(y_pred == y_true))
    per_region = meta[meta["region"] != "Other"].groupby("region")["ok"].mean()
    assert m["acc_worst_region"] == pytest.approx(per_region.min()) == pytest.approx(0.5)
    assert m["acc_avg"] == pytest.approx(0.5)
    assert m["acc_region:Europe"] == pytest.approx(1.0)


def test_torch_scatter_stand_in():
    from drm.datasets.wilds_data import ensure_torch_scatter, scatter

    g = torch.tensor([0, 2, 2, 0, 4, 2])
    v = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    direct = torch.tensor([v[g == k].mean().item() if (g == k).any() else 0.0 for k in range(6)])
    assert torch.allclose(scatter(src=v, index=g, dim_size=6, reduce="mean"), direct)
    assert torch.allclose(scatter(v, g, dim_size=6, reduce="sum"), torch.tensor([1.0, 0, 2, 0, 1, 0]))
    x = torch.randn(5, 6)
    assert torch.allclose(scatter(x, g, dim=1, dim_size=6, reduce="mean"),
                          torch.stack([scatter(r, g, dim_size=6, reduce="mean") for r in x]))
    assert ensure_torch_scatter() in ("torch_scatter", "drm stand-in")
    from wilds.common.utils import avg_over_groups

    avgs, counts = avg_over_groups(v, g, 6)
    assert torch.allclose(avgs, direct) and counts.tolist() == [2, 0, 3, 0, 1, 0]


def test_wilds_missing_folder(tmp_path):
    from drm.datasets.wilds_data import FMoWSource, IWildCamSource

    with pytest.raises(DRMError, match="get_dataset\\('iwildcam', download=True"):
        IWildCamSource.open(tmp_path / "data")
    assert not (tmp_path / "data").exists()  # nothing created as a side effect
    (tmp_path / "data" / "fmow_v1.1").mkdir(parents=True)
    with pytest.raises(DRMError, match="RELEASE_v1.1.txt"):
        FMoWSource.open(tmp_path / "data")
