"""ImageNet and its distribution shifts, in the folder layout the usual downloads unpack to.

Layout under data.root (the layout WiSE-FT and FLYP read; any shift may be absent)::

    imagenet/train/<wnid>/*.JPEG          required: the 1000 (or your subset of) class folders
    imagenet/val/<wnid>/*.JPEG            ImageNet val, sorted into class folders
                                          (`val_in_folder/` is accepted too)
    imagenet/classnames.json              optional: {"<wnid>": "class name", ...}
    imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg   ImageNet-V2 (folders = class index)
    imagenet-r/<wnid>/*.jpg               ImageNet-R (200 classes)
    imagenet-a/<wnid>/*.jpg               ImageNet-A (200 classes)
    sketch/<wnid>/*.JPEG                  ImageNet-Sketch
    objectnet-1.0/images/<folder>/*.png   ObjectNet, with objectnet-1.0/mappings/ as shipped
                                          (folder_to_objectnet_label.json,
                                          objectnet_to_imagenet_1k.json,
                                          pytorch_to_imagenet_2012_id.json,
                                          imagenet_to_label_2012_v2)

Splits: `train` (ImageNet train minus `id_val`), `id_val` (a fixed 1% of ImageNet train,
chosen by a hash of each image's path: stable across machines and listing orders),
`id_test` (ImageNet val), and one OOD split per shift present: `ood_imagenet_v2`,
`ood_imagenet_r`, `ood_imagenet_a`, `ood_imagenet_sketch`, `ood_objectnet`. There is no
OOD validation split: set `evaluate.beta` to a number (the authors' 0.5).

Evaluation as the benchmarks define it: ImageNet-R and -A are scored over their 200
classes only (the other logits are masked), ObjectNet over the 113 classes that map to
ImageNet classes, an ImageNet prediction counting as correct when it falls in the true
ObjectNet class's set of ImageNet classes (and its images lose a 2-pixel border, as the
reference code does); images of ObjectNet classes with no ImageNet counterpart are not part
of the benchmark and are left out (their count is in `excluded`). The OOD headline is the
mean top-1 accuracy over the shifts present: `evaluate` adds it as split `ood_mean`.

Class names come from open_clip's ImageNet class names (the names CLIP's prompts use) when
the train folder has the standard 1000 wnids, else from classnames.json, else the wnids.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from drm.datasets.base import DataSource, Split, read_json
from drm.datasets.folder import FileImageDataset, _is_image, _visible_dirs, list_images
from drm.base.errors import ConfigError, DRMError

# split name -> folder under root (ImageNet-V2's class folders are indices, the others wnids)
SHIFTS = {
    "ood_imagenet_v2": "imagenetv2-matched-frequency-format-val",
    "ood_imagenet_r": "imagenet-r",
    "ood_imagenet_a": "imagenet-a",
    "ood_imagenet_sketch": "sketch",
    "ood_objectnet": "objectnet-1.0/images",
}
OBJECTNET_MAPPINGS = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                      "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")
ID_VAL_PERCENT = 1
DISAMBIGUATE = {744: "projectile", 836: "sunglass"}  # see _classnames
STANDARD_ENDS = ("n01440764", "n15075141")  # first and last of ImageNet-1k's sorted wnids
LAYOUT_HELP = ("expected data.root/imagenet/train/<wnid>/ (and imagenet/val/<wnid>/, imagenet-r/, imagenet-a/, "
               "sketch/, imagenetv2-matched-frequency-format-val/, objectnet-1.0/): see drm/datasets/imagenet.py")


def in_id_val(rel_path: str) -> bool:
    """Whether a train image is held out as id_val: 1% by a hash of its relative path."""
    return int(hashlib.sha1(rel_path.encode()).hexdigest()[:8], 16) % 100 < ID_VAL_PERCENT


class CroppedImageDataset(FileImageDataset):
    """ObjectNet's images carry a border: the reference evaluation crops 2 pixels off each side."""

    def image(self, i) -> Image.Image:
        img = super().image(i)
        w, h = img.size
        return img.crop((2, 2, w - 2, h - 2)) if w > 4 and h > 4 else img


@dataclass
class ImageNetSource(DataSource):
    wnids: list[str] = field(default_factory=list)
    objectnet: dict | None = None  # folder -> sorted ImageNet class indices (mapped classes only)
    # split -> [(class folder, label or None: left out by the benchmark)], checked at open
    layout: dict[str, list[tuple[Path, int | None]]] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)  # split -> images left out by the benchmark
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root) -> "ImageNetSource":
        root = Path(root)
        train = root / "imagenet" / "train"
        if not train.is_dir():
            raise DRMError(f"{train} not found (data.root: {root}); {LAYOUT_HELP}")
        wnids = [p.name for p in _visible_dirs(train)]
        if not wnids:
            raise DRMError(f"{train} has no class folders; {LAYOUT_HELP}")
        classnames = _classnames(root / "imagenet", wnids)
        index = {w: i for i, w in enumerate(wnids)}
        splits = {"train": "train", "id_val": "id"}
        layout: dict[str, list[tuple[Path, int | None]]] = {}
        val = _val_dir(root)
        if val is not None:
            splits["id_test"] = "id"
            layout["id_test"] = _wnid_folders(val, index, train, hint=(
                "ImageNet val must be sorted into <wnid>/ class folders first (the usual valprep script)"))
        objectnet = None
        for name, folder in SHIFTS.items():
            base = root / folder
            if not base.is_dir():
                continue
            splits[name] = "ood"
            if name == "ood_imagenet_v2":
                if len(wnids) != 1000:
                    raise ConfigError(f"ImageNet-V2's class folders are indices into the 1000 ImageNet classes, "
                                      f"but {train} has {len(wnids)} class folders; remove {base} or use the "
                                      "full class set")
                bad = [f.name for f in _visible_dirs(base) if not (f.name.isdigit() and int(f.name) < 1000)]
                if bad:
                    raise ConfigError(f"{base}: ImageNet-V2 class folders are named 0..999, found {bad[:5]}")
                layout[name] = [(f, int(f.name)) for f in _visible_dirs(base)]
            elif name == "ood_objectnet":
                objectnet, listed = _objectnet_map(root, len(wnids))
                unknown = [f.name for f in _visible_dirs(base) if f.name not in listed]
                if unknown:
                    raise ConfigError(f"{base}: folder(s) {unknown[:5]} are not in ObjectNet's "
                                      f"{OBJECTNET_MAPPINGS[0]}; remove them or fix the mapping")
                # unmapped classes (no ImageNet counterpart) are not part of the benchmark
                layout[name] = [(f, objectnet[f.name][0] if f.name in objectnet else None)
                                for f in _visible_dirs(base)]
            else:
                layout[name] = _wnid_folders(base, index, train)
                if name in ("ood_imagenet_r", "ood_imagenet_a") and len(layout[name]) != 200:
                    warnings.warn(f"{base} has {len(layout[name])} class folders, not ImageNet-R/A's 200 "
                                  "(a partial download?): it is scored over the classes present", stacklevel=2)
        ood = [s for s, r in splits.items() if r == "ood"]
        if not ood:
            warnings.warn(f"no ImageNet shift found under {root} ({sorted(SHIFTS.values())}): OOD metrics "
                          "will be missing", stacklevel=2)
        return cls(root=root, classnames=classnames, splits=splits, group_columns=["domain"],
                   headline="accuracy", wnids=wnids, objectnet=objectnet, ood_average=ood, layout=layout)

    # ---- files and labels -------------------------------------------------------------
    def _train_files(self) -> dict[str, tuple[list[str], list[int]]]:
        """train and id_val, from one walk of the train folder per source (1.28M files)."""
        if "train" not in self._cache:
            out = {"train": ([], []), "id_val": ([], [])}
            for y, wnid in enumerate(self.wnids):
                for r in list_images(self.root / "imagenet" / "train" / wnid, self.root):
                    rel, ys = out["id_val" if in_id_val(r) else "train"]
                    rel.append(r)
                    ys.append(y)
            self._cache["train"] = out
        return self._cache["train"]

    def files(self, split: str) -> tuple[list[str], list[int]]:
        self.check_split(split)
        if split in ("train", "id_val"):
            rel, ys = self._train_files()[split]
            return list(rel), list(ys)
        rel, ys, excluded = [], [], 0
        for folder, y in self.layout[split]:
            found = list_images(folder, self.root)
            if y is None:
                excluded += len(found)
                continue
            rel += found
            ys += [y] * len(found)
        if excluded:
            self.excluded[split] = excluded
        return rel, ys

    def load(self, split: str, transform=None) -> Split:
        rel, ys = self.files(split)
        if not rel:
            raise DRMError(f"split {split!r} holds no images under {self.root}; {LAYOUT_HELP}")
        if split in self.excluded and ("warned", split) not in self._cache:
            self._cache[("warned", split)] = True
            warnings.warn(f"{split}: {self.excluded[split]} images of ObjectNet classes without an ImageNet "
                          "counterpart are left out, as the benchmark defines it", stacklevel=2)
        meta = pd.DataFrame({"id": pd.Series(rel, dtype=str), "y": np.asarray(ys, dtype=np.int64),
                             "domain": split})
        kind = CroppedImageDataset if split == "ood_objectnet" else FileImageDataset
        ds = kind([str(self.root / r) for r in rel], meta["y"].to_numpy(), transform)
        return Split(split, self.splits[split], meta, ds)

    # ---- evaluation as the benchmarks define it ----------------------------------------
    def class_mask(self, split: str) -> np.ndarray | None:
        """The classes a split is scored over (R, A: their 200; ObjectNet: its 113 mapped sets):
        each head's softmax is renormalised over them before the dual mixture and the argmax."""
        if split not in ("ood_imagenet_r", "ood_imagenet_a", "ood_objectnet"):
            return None
        key = ("mask", split)
        if key not in self._cache:
            mask = np.zeros(len(self.wnids), dtype=bool)
            if split == "ood_objectnet":
                for ids in self.objectnet.values():
                    mask[ids] = True
            else:
                mask[[y for _, y in self.layout[split]]] = True
            self._cache[key] = mask
        return self._cache[key]

    def project_predictions(self, split: str, pred: np.ndarray) -> np.ndarray:
        """ObjectNet: an ImageNet class -> its ObjectNet class's canonical index (the label)."""
        if split != "ood_objectnet":
            return pred
        if "canon" not in self._cache:
            canon = np.arange(len(self.wnids))
            for ids in self.objectnet.values():
                canon[ids] = ids[0]
            self._cache["canon"] = canon
        return self._cache["canon"][np.asarray(pred)]

    def benchmark_metrics(self, split: str, meta: pd.DataFrame, y_pred) -> dict[str, float]:
        return {"accuracy": float(np.mean(np.asarray(y_pred) == meta["y"].to_numpy())) if len(meta) else float("nan")}


def _wnid_folders(base: Path, index: dict[str, int], train: Path, hint: str = "") -> list[tuple[Path, int]]:
    folders = _visible_dirs(base)
    stray = [p.name for p in base.iterdir() if p.is_file() and _is_image(p.name)][:3]
    unknown = [f.name for f in folders if f.name not in index][:5]
    if stray or unknown or not folders:
        what = (f"images directly in it ({stray})" if stray else
                f"folder(s) {unknown} that are not class folders of {train}" if unknown else "no class folders")
        raise ConfigError(f"{base}: {what}; expected <wnid>/ class folders" + (f": {hint}" if hint else ""))
    return [(f, index[f.name]) for f in folders]


def _val_dir(root: Path) -> Path | None:
    for name in ("val_in_folder", "val"):
        if (root / "imagenet" / name).is_dir():
            return root / "imagenet" / name
    return None


def _classnames(folder: Path, wnids: list[str]) -> list[str]:
    mapping_path = folder / "classnames.json"
    if mapping_path.exists():
        mapping = read_json(mapping_path)
        if not isinstance(mapping, dict) or not all(isinstance(v, str) and v.strip() for v in mapping.values()):
            raise ConfigError(f"{mapping_path} must map wnid -> class name, e.g. {{\"{wnids[0]}\": \"tench\"}}")
        missing = [w for w in wnids if w not in mapping]
        if missing:
            raise ConfigError(f"{mapping_path} has no name for {len(missing)} class folder(s), e.g. {missing[:3]}")
        names = [mapping[w] for w in wnids]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"{mapping_path} gives several classes the same name {dup[:5]}: "
                              "descriptions are keyed by class name, so give them distinct names")
        return names
    if len(wnids) == 1000 and (wnids[0], wnids[-1]) == STANDARD_ENDS:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        names = list(IMAGENET_CLASSNAMES)
        # CLIP's list names two pairs of classes alike; descriptions are keyed by name, so the
        # second of each pair takes its WordNet synonym (n04008634 "projectile, missile",
        # n04355933 "sunglass"), as the ImageNet synsets name them.
        for i, name in DISAMBIGUATE.items():
            if names[i] in names[:i] + names[i + 1:]:
                names[i] = name
        return names
    warnings.warn(f"{len(wnids)} class folders that are not ImageNet's standard 1000 wnids, and no {mapping_path}: "
                  "prompts will use the wnids; put {\"<wnid>\": \"name\"} there", stacklevel=3)
    return list(wnids)


def _objectnet_map(root: Path, n_classes: int) -> tuple[dict[str, list[int]], set[str]]:
    """(ObjectNet folder -> sorted ImageNet class indices for the mapped classes, every folder
    the mapping lists), from the mapping files ObjectNet ships."""
    maps = root / "objectnet-1.0" / "mappings"
    missing = [f for f in OBJECTNET_MAPPINGS if not (maps / f).exists()]
    if missing:
        raise DRMError(f"ObjectNet needs its mapping files in {maps} (shipped with ObjectNet 1.0): missing {missing}")
    if n_classes != 1000:
        raise ConfigError(f"ObjectNet maps onto the 1000 ImageNet classes, but the train folder has {n_classes}")
    folder_to_label, label_to_names, pytorch_to_2012 = (read_json(maps / f) for f in OBJECTNET_MAPPINGS[:3])
    id2012_to_index = {int(v): int(k) for k, v in pytorch_to_2012.items()}
    lines = (maps / OBJECTNET_MAPPINGS[3]).read_text().splitlines()
    name_to_index = {line.strip(): id2012_to_index[i] for i, line in enumerate(lines) if line.strip()}
    out, owner = {}, {}
    for folder, label in folder_to_label.items():
        if label not in label_to_names:
            continue
        names = label_to_names[label].split("; ")
        unknown = [n for n in names if n not in name_to_index]
        if unknown:
            raise ConfigError(f"{maps / OBJECTNET_MAPPINGS[1]}: {label!r} names ImageNet class(es) {unknown} "
                              f"that {OBJECTNET_MAPPINGS[3]} does not list")
        out[folder] = sorted(name_to_index[n] for n in names)
        for i in out[folder]:
            if i in owner:
                raise ConfigError(f"{maps / OBJECTNET_MAPPINGS[1]}: ImageNet class {i} belongs to both "
                                  f"{owner[i]!r} and {label!r}; the benchmark needs disjoint class sets")
            owner[i] = label
    return out, set(folder_to_label)
