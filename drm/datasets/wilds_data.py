"""WILDS iWildCam (v2.0) and FMoW (v1.1) as DataSources, over the real `wilds` classes.

data.root is the WILDS root_dir, the folder that holds `iwildcam_v2.0/` or `fmow_v1.1/`
(pointing at the dataset folder itself also works). Nothing is downloaded: the dataset
folder must exist with its RELEASE_v{version}.txt, as `wilds.get_dataset(..., download=True)`
leaves it.

Splits (our name -> WILDS name, role): train -> train (train); id_val, id_test (id);
ood_val -> val, ood_test -> test (ood).

Class names (what prompts use):
- iWildCam: WILDS' categories.csv only has Latin names, which CLIP prompts poorly; FLYP
  and WiSE-FT prompt with English common names from their own label list. We do not ship
  that list: put `classnames.json`, a JSON list of names in label order, in data.root (or
  in the dataset folder) to use your own names; otherwise categories.csv's names are used
  (with a warning).
- FMoW: WILDS' 62 category names with "_" replaced by " " (same override file).

meta group columns: iWildCam `location` (int, WILDS' location index); FMoW `region` (name,
from WILDS' metadata map; "Other" for unmapped countries) and `year` (calendar year).
meta ids: iWildCam the image filename; FMoW `rgb_img_{row}` (row of rgb_metadata.csv).

benchmark_metrics runs the WILDS dataset's own eval(); headline: iWildCam "F1-macro_all"
(macro-F1 over the classes present in the true labels), FMoW "acc_worst_region" (worst
accuracy over regions with examples, excluding "Other"). FMoW's eval imports torch_scatter
for one call, scatter(src, index, dim_size=..., reduce="mean"); when torch_scatter is not
importable an in-process replacement with torch ops is registered in sys.modules.
"""
from __future__ import annotations

import json
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from drm.datasets.base import DataSource, Split
from drm.base.errors import DRMError

# our split name -> WILDS split name
SPLIT_TO_WILDS = {"train": "train", "id_val": "id_val", "id_test": "id_test", "ood_val": "val", "ood_test": "test"}
SPLIT_ROLES = {"train": "train", "id_val": "id", "id_test": "id", "ood_val": "ood", "ood_test": "ood"}
OVERRIDE_FILE = "classnames.json"


# ---------------------------------------------------------------- torch_scatter stand-in
def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out=None, dim_size: int | None = None,
            reduce: str = "sum") -> torch.Tensor:
    """torch_scatter.scatter for a 1-D index along `dim` (what wilds' avg_over_groups calls).

    reduce "sum"/"add" or "mean"; empty slots are 0, as in torch_scatter; integer means
    use floor division, as torch_scatter does.
    """
    if out is not None:
        raise NotImplementedError("drm's torch_scatter stand-in does not support out=")
    if reduce not in ("sum", "add", "mean"):
        raise NotImplementedError(f"drm's torch_scatter stand-in supports reduce sum/mean, not {reduce!r}")
    index = index.reshape(-1).long()
    dim = dim % src.dim()
    if index.numel() != src.shape[dim]:
        raise ValueError(f"index has {index.numel()} entries, src has {src.shape[dim]} along dim {dim}")
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    shape = list(src.shape)
    shape[dim] = dim_size
    total = torch.zeros(shape, dtype=src.dtype, device=src.device).index_add_(dim, index, src)
    if reduce != "mean":
        return total
    count = torch.zeros(dim_size, dtype=src.dtype, device=src.device).index_add_(
        0, index, torch.ones_like(index, dtype=src.dtype)).clamp_(min=1)
    view = [1] * src.dim()
    view[dim] = dim_size
    count = count.view(view)
    if src.is_floating_point() or src.is_complex():
        return total / count
    return torch.div(total, count, rounding_mode="floor")


def ensure_torch_scatter() -> str:
    """Make `import torch_scatter` work; returns "torch_scatter" or "drm stand-in"."""
    try:
        import torch_scatter  # noqa: F401

        return "drm stand-in" if getattr(torch_scatter, "__drm_stand_in__", False) else "torch_scatter"
    except ImportError:
        shim = types.ModuleType("torch_scatter")
        shim.__doc__ = "drm stand-in for torch_scatter (scatter with reduce sum/mean only)"
        shim.scatter = scatter
        shim.__drm_stand_in__ = True
        sys.modules["torch_scatter"] = shim
        return "drm stand-in"


# ---------------------------------------------------------------- dataset
class WildsImageDataset(Dataset):
    """Items of a WILDS dataset (by full-dataset index), read lazily via its get_input."""

    def __init__(self, wilds_dataset, indices, labels, transform=None):
        self.wilds_dataset = wilds_dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self):
        return len(self.indices)

    def image(self, i):
        img = self.wilds_dataset.get_input(int(self.indices[i]))
        return img.convert("RGB") if img.mode != "RGB" else img

    def __getitem__(self, i):
        img = self.image(i)
        return (self.transform(img) if self.transform else img), int(self.labels[i])


# ---------------------------------------------------------------- sources
@dataclass
class WildsSource(DataSource):
    """Common part of the WILDS sources; subclasses set the class-level constants."""

    dataset_name = ""  # wilds name
    version = ""
    title = ""
    wilds: object = field(default=None, repr=False, compare=False)  # the wilds dataset object
    classnames_source: str = ""

    @classmethod
    def locate(cls, root) -> tuple[Path, Path]:
        """(root_dir for wilds, dataset folder) for data.root, or a DRMError saying what to do."""
        root = Path(root)
        folder_name = f"{cls.dataset_name}_v{cls.version}"
        release = f"RELEASE_v{cls.version}.txt"
        if root.name == folder_name and (root / release).exists():
            return root.parent, root
        if (root / folder_name / release).exists():
            return root, root / folder_name
        hint = ""
        if (root / folder_name).is_dir():
            hint = f" ({root / folder_name} exists but has no {release}: an incomplete download?)"
        raise DRMError(
            f"{cls.title} not found: looked for {root / folder_name / release}{hint}. data.root must be the "
            f"folder that holds {folder_name}/. Download it (large) with: python -c \"from wilds import "
            f"get_dataset; get_dataset('{cls.dataset_name}', download=True, root_dir='{root}')\" "
            f"(or see https://wilds.stanford.edu/downloads)")

    @classmethod
    def open(cls, root):
        root = Path(root)
        root_dir, data_dir = cls.locate(root)
        from wilds import get_dataset  # slow import: only here

        try:
            ds = get_dataset(dataset=cls.dataset_name, version=cls.version, root_dir=str(root_dir), download=False)
        except (FileNotFoundError, KeyError, ValueError, AssertionError, IndexError,
                pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise DRMError(f"could not read the {cls.title} folder {data_dir} with wilds "
                           f"({type(e).__name__}: {e}); is it complete? Re-download it if not.") from e
        classnames, how = cls.read_classnames(root, data_dir, ds)
        return cls(root=root, classnames=classnames, splits=dict(SPLIT_ROLES), group_columns=list(cls.groups),
                   headline=cls.headline_metric, wilds=ds, classnames_source=how)

    @staticmethod
    def read_override(root: Path, data_dir: Path, n_classes: int) -> tuple[list[str], str] | None:
        for path in dict.fromkeys([root / OVERRIDE_FILE, data_dir / OVERRIDE_FILE]):
            if not path.exists():
                continue
            try:
                names = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise DRMError(f"{path} is not valid JSON: {e}") from e
            if not (isinstance(names, list) and all(isinstance(n, str) and n.strip() for n in names)):
                raise DRMError(f"{path} must be a JSON list of class names (non-empty strings) in label order")
            if len(names) != n_classes:
                raise DRMError(f"{path} lists {len(names)} class names, the dataset has {n_classes} classes "
                               f"(labels 0..{n_classes - 1}): give one name per label, in label order")
            return [n.strip() for n in names], str(path)
        return None

    # --- splits
    def indices(self, split: str) -> np.ndarray:
        """Full-dataset WILDS indices of a split, in WILDS order."""
        self.check_split(split)
        ds = self.wilds
        return np.where(ds.split_array == ds.split_dict[SPLIT_TO_WILDS[split]])[0]

    def ids(self, idx: np.ndarray) -> list[str]:
        raise NotImplementedError

    def group_frame(self, idx: np.ndarray) -> dict[str, object]:
        raise NotImplementedError

    def load(self, split: str, transform=None) -> Split:
        idx = self.indices(split)
        y = np.asarray(self.wilds.y_array[idx], dtype=np.int64)
        meta = pd.DataFrame({"id": pd.Series(self.ids(idx), dtype=str), "y": y, **self.group_frame(idx)})
        return Split(split, self.splits[split], meta, WildsImageDataset(self.wilds, idx, y, transform))

    # --- metrics
    def benchmark_metrics(self, split: str, meta: pd.DataFrame, y_pred) -> dict[str, float]:
        """The WILDS dataset's own eval() on the rows of `meta` (matched by id)."""
        idx = self.indices(split)
        pos = pd.Index(self.ids(idx)).get_indexer(meta["id"].astype(str))
        if (pos < 0).any():
            missing = meta["id"][pos < 0].head(3).tolist()
            raise DRMError(f"benchmark_metrics: ids {missing} are not in split {split!r}")
        idx = idx[pos]
        y_true = torch.as_tensor(np.asarray(self.wilds.y_array[idx]), dtype=torch.long)
        if "y" in meta and not np.array_equal(meta["y"].to_numpy(), y_true.numpy()):
            raise DRMError(f"benchmark_metrics: meta labels disagree with {self.title}'s for split {split!r}")
        y_pred = torch.as_tensor(np.asarray(y_pred))
        if y_pred.dim() == 2:
            y_pred = y_pred.argmax(1)
        y_pred = y_pred.reshape(-1).long()
        if len(y_pred) != len(idx):
            raise DRMError(f"benchmark_metrics: {len(y_pred)} predictions for {len(idx)} rows of split {split!r}")
        self.before_eval()
        results, _ = self.wilds.eval(y_pred, y_true, self.wilds.metadata_array[idx])
        out = {}
        for k, v in results.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                out[k] = float(v.item())
            elif isinstance(v, (int, float, np.number)):
                out[k] = float(v)
        return out

    def before_eval(self) -> None:
        pass


@dataclass
class IWildCamSource(WildsSource):
    dataset_name = "iwildcam"
    version = "2.0"
    title = "WILDS iWildCam v2.0"
    groups = ("location",)
    headline_metric = "F1-macro_all"

    @classmethod
    def read_classnames(cls, root: Path, data_dir: Path, ds) -> tuple[list[str], str]:
        n = int(ds.n_classes)
        override = cls.read_override(root, data_dir, n)
        if override:
            return override
        latin = None
        cats = data_dir / "categories.csv"
        if cats.exists():
            df = pd.read_csv(cats)
            if {"y", "name"} <= set(df.columns):
                df = df[df["y"] < n].drop_duplicates("y").sort_values("y")
                if df["y"].tolist() == list(range(n)):
                    latin = [str(s).strip() for s in df["name"]]
        warnings.warn(f"iWildCam prompts will use the Latin names of {cats.name}; for English common "
                      f"names put a JSON list (label order) in {root / OVERRIDE_FILE}")
        if latin is None:
            raise DRMError(f"{cats} is missing or lacks y/name rows for labels 0..{n - 1}: put the class names "
                           f"in {root / OVERRIDE_FILE} (JSON list, label order)")
        return latin, f"{cats.name} (Latin names)"

    def ids(self, idx):
        return [str(f) for f in np.asarray(self.wilds._input_array)[idx]]

    def group_frame(self, idx):
        fields = list(self.wilds.metadata_fields)
        return {"location": self.wilds.metadata_array[idx, fields.index("location")].numpy().astype(np.int64)}


@dataclass
class FMoWSource(WildsSource):
    dataset_name = "fmow"
    version = "1.1"
    title = "WILDS FMoW v1.1"
    groups = ("region", "year")
    headline_metric = "acc_worst_region"

    @classmethod
    def read_classnames(cls, root: Path, data_dir: Path, ds) -> tuple[list[str], str]:
        override = cls.read_override(root, data_dir, int(ds.n_classes))
        if override:
            return override
        from wilds.datasets.fmow_dataset import categories

        return [c.replace("_", " ") for c in categories], "wilds FMoW categories"

    def ids(self, idx):
        return [f"rgb_img_{int(i)}" for i in np.asarray(self.wilds.full_idxs)[idx]]

    def group_frame(self, idx):
        ds = self.wilds
        fields = list(ds.metadata_fields)
        region_idx = ds.metadata_array[idx, fields.index("region")].numpy()
        region_names = np.asarray(ds.metadata_map["region"], dtype=object)
        year_idx = ds.metadata_array[idx, fields.index("year")].numpy()
        year = np.asarray(ds.metadata_map["year"])[year_idx]  # wilds rejects years outside its map
        return {"region": region_names[region_idx].astype(str), "year": year.astype(np.int64)}

    def before_eval(self) -> None:
        ensure_torch_scatter()


def iwildcam_common_names(labels_csv) -> list[str]:
    """iWildCam's English common names in label order, from the label list FLYP and WiSE-FT
    prompt with (WiSE-FT's src/datasets/iwildcam_metadata/labels.csv: columns y, name, english;
    rows with y 99999 are not classes), lower-cased as the DRM authors' code does. A name that
    repeats (e.g. two "lowland paca" labels) gets its Latin name in parentheses, since every
    class needs a distinct name here (descriptions are matched by name)."""
    path = Path(labels_csv)
    if not path.exists():
        raise DRMError(f"{path} not found: download WiSE-FT's iWildCam label list, e.g. curl -fL -o {path} "
                       "https://raw.githubusercontent.com/mlfoundations/wise-ft/HEAD/src/datasets/iwildcam_metadata/labels.csv")
    df = pd.read_csv(path)
    if not {"y", "english"} <= set(df.columns):
        raise DRMError(f"{path} has columns {list(df.columns)}; expected WiSE-FT's labels.csv (y, name, english)")
    df = df[df["y"] < 99999].sort_values("y")
    if df["y"].tolist() != list(range(len(df))):
        raise DRMError(f"{path}: labels are not 0..{len(df) - 1} in order (rows with y < 99999)")
    names = [str(s).strip().lower() for s in df["english"]]
    latin = [str(s).strip() for s in df.get("name", df["english"])]
    out, seen = [], set()
    for name, lat in zip(names, latin):
        if name in seen:
            name = f"{name} ({lat})"
        k = 2
        while name in seen:
            name, k = f"{name} {k}", k + 1
        seen.add(name)
        out.append(name)
    return out
