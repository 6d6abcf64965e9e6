"""A plain image-folder data source: root/{split}/{class}/*.{jpg,png,...}.

Layout::

    root/
      classnames.json        optional: {"folder_name": "human class name", ...}
      train/<class>/...      required; its class folders define the classes (sorted)
      id_val/<class>/...     split roles come from the folder name:
      id_test/<class>/...      "train"            -> train
      ood_val/<class>/...      "id_*", "val", "test" -> id   ("val"/"test" count as ID)
      ood_test/<class>/...     "ood_*"            -> ood  (e.g. ood_sketch)

Any other split folder name is an error. Every split uses the train split's class set (a
split may lack some classes; a class folder the train split does not have is an error).
Images are found recursively inside each class folder; hidden files and non-image files
are ignored. The class name used for prompts is classnames.json's value for the folder,
else the folder name itself.

meta: id = the image's path relative to root (POSIX, e.g. "train/cat/001.png": stable),
y = class index, domain = split name (the only group column).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

from drm.datasets.base import DataSource, Split, read_json
from drm.base.errors import ConfigError, DRMError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
CANONICAL_SPLITS = ("train", "id_val", "id_test", "ood_val", "ood_test")
LAYOUT_HELP = (
    "expected root/{split}/{class}/<images> with split folders train (required), id_val, id_test, "
    "ood_val, ood_test (also id_<name>, ood_<name>, and val/test, which count as ID)"
)


def split_role(name: str) -> str | None:
    """The role of a split folder name, or None if the name is not a split name."""
    if name == "train":
        return "train"
    if name in ("val", "test") or (name.startswith("id_") and len(name) > 3):
        return "id"
    if name.startswith("ood_") and len(name) > 4:
        return "ood"
    return None


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: Path, root: Path) -> list[str]:
    """Image files under `folder`, recursively (hidden files and folders skipped), as sorted
    POSIX paths relative to `root`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f).relative_to(root).as_posix() for f in filenames if _is_image(f)]
    return sorted(found)


def unreadable_image(path, error: Exception) -> str:
    from drm.base.atomic import shown

    return (f"image {shown(path)} cannot be read ({type(error).__name__}: {error}): the file is corrupt or truncated; "
            "remove it from the dataset folder or replace it with a good copy, then rerun")


class FileImageDataset(Dataset):
    """Images read from files per item (picklable: paths, labels and the transform)."""

    def __init__(self, paths: list[str], labels, transform=None):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def image(self, i) -> Image.Image:
        try:
            with Image.open(self.paths[i]) as img:
                return img.convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:  # PIL: unidentified, truncated, broken chunks
            raise DRMError(unreadable_image(self.paths[i], e)) from None

    def __getitem__(self, i):
        img = self.image(i)
        return (self.transform(img) if self.transform else img), int(self.labels[i])


@dataclass
class ImageFolderSource(DataSource):
    folders: list[str] | None = None  # class folder names, in label order

    @classmethod
    def open(cls, root) -> "ImageFolderSource":
        root = Path(root)
        if not root.is_dir():
            raise DRMError(f"image folder {root} not found (data.root): {LAYOUT_HELP}")
        split_dirs = {p.name: p for p in _visible_dirs(root)}
        unknown = [n for n in split_dirs if split_role(n) is None]
        if unknown:
            raise ConfigError(f"{root}: folder(s) {unknown} are not split names; {LAYOUT_HELP}")
        if "train" not in split_dirs:
            raise DRMError(f"{root}: no train/ folder; {LAYOUT_HELP}")
        stray = [p.name for p in split_dirs["train"].iterdir() if p.is_file() and _is_image(p.name)]
        if stray:
            raise ConfigError(f"{root / 'train'}: images must sit in class folders, found {stray[:3]} directly in train/")

        folders = [p.name for p in _visible_dirs(split_dirs["train"])]
        if not folders:
            raise DRMError(f"{root / 'train'} has no class folders; {LAYOUT_HELP}")
        known = set(folders)
        order = {n: i for i, n in enumerate(CANONICAL_SPLITS)}
        names = sorted(split_dirs, key=lambda n: (order.get(n, len(order)), n))
        for name in names:
            extra = [p.name for p in _visible_dirs(split_dirs[name]) if p.name not in known]
            if extra:
                raise ConfigError(
                    f"{root / name}: class folder(s) {extra} are not classes of the train split "
                    f"(classes come from {root / 'train'}: {folders}); rename or remove them")

        classnames = list(folders)
        mapping_path = root / "classnames.json"
        if mapping_path.exists():
            mapping = read_json(mapping_path)
            if not isinstance(mapping, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in mapping.items()):
                raise ConfigError(f"{mapping_path} must be a JSON object mapping class folder name -> "
                                  f"class name (non-empty strings), e.g. {{\"{folders[0]}\": \"...\"}}")
            bad = sorted(set(mapping) - known)
            if bad:
                raise ConfigError(f"{mapping_path} names folder(s) {bad} that are not class folders of "
                                  f"{root / 'train'}: {folders}")
            classnames = [mapping.get(f, f) for f in folders]

        return cls(root=root, classnames=classnames, splits={n: split_role(n) for n in names},
                   group_columns=["domain"], headline="accuracy", folders=folders)

    def files(self, split: str) -> tuple[list[str], list[int]]:
        """Relative POSIX paths (sorted by class, then path) and labels of a split's images."""
        self.check_split(split)
        split_dir = self.root / split
        rel, ys = [], []
        for y, folder in enumerate(self.folders):
            class_dir = split_dir / folder
            if not class_dir.is_dir():
                continue
            found = list_images(class_dir, self.root)
            rel += found
            ys += [y] * len(found)
        return rel, ys

    def load(self, split: str, transform=None) -> Split:
        rel, ys = self.files(split)
        if not rel:
            raise DRMError(f"{self.root / split} holds no images (extensions: {sorted(IMAGE_EXTENSIONS)}); "
                           f"{LAYOUT_HELP}")
        meta = pd.DataFrame({"id": pd.Series(rel, dtype=str), "y": np.asarray(ys, dtype=np.int64),
                             "domain": split})
        ds = FileImageDataset([str(self.root / r) for r in rel], meta["y"].to_numpy(), transform)
        return Split(split, self.splits[split], meta, ds)

    def benchmark_metrics(self, split: str, meta: pd.DataFrame, y_pred) -> dict[str, float]:
        """Plain top-1 accuracy (an image folder has no benchmark-specific metric)."""
        y_pred = np.asarray(y_pred)
        if y_pred.ndim == 2:
            y_pred = y_pred.argmax(1)
        if len(y_pred) != len(meta):
            raise DRMError(f"{len(y_pred)} predictions for {len(meta)} rows of split {split!r}")
        return {"accuracy": float(np.mean(y_pred == meta["y"].to_numpy())) if len(meta) else float("nan")}
