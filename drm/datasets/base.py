"""Data sources: one interface for the embedded world and real datasets.

A DataSource knows its class names, its splits (each with a role: train, id or ood) and
how to load a split as a `Split`: a torch Dataset yielding (image tensor, label) through
the model's own transform, plus a metadata frame (one row per sample, same order) with a
stable string `id`, the label `y` and group columns for worst-group metrics. Images are
read lazily, per item, so the same code path serves DataLoader workers on real data.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from torch.utils.data import Dataset

from drm.base.errors import ConfigError, DRMError

def read_json(path):
    """A JSON file a user provides (class names, mappings); invalid JSON is a ConfigError."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e


@dataclass
class Split:
    name: str
    role: str
    meta: pd.DataFrame  # columns: id (str), y (int), group columns
    dataset: Dataset  # item i -> (image tensor, y) for meta row i


def check_split_contents(source: "DataSource", split: Split) -> Split:
    """A loaded split must have samples, and labels in 0..len(classnames)-1."""
    from drm.base.atomic import shown

    where = f"split {split.name!r} of data.root {shown(source.root)}"
    if len(split.meta) == 0:
        raise DRMError(f"{where} is empty: it has no samples; add its images (or labels), or remove the split "
                       "from the data")
    y = split.meta["y"].to_numpy()
    n = len(source.classnames)
    bad = (y < 0) | (y >= n)
    if bad.any():
        ids = split.meta["id"].astype(str).to_numpy()[bad][:3].tolist()
        raise DRMError(f"{where} has {int(bad.sum())} label(s) outside the {n} classes (0..{n - 1}), e.g. "
                       f"{', '.join(f'{i} (y={v})' for i, v in zip(ids, y[bad][:3].tolist()))}: its labels and its "
                       "class list disagree; fix the labels or the class list, then rerun")
    return split


def _checked_load(load):
    @functools.wraps(load)
    def checked(self, split, *args, **kwargs):
        import pyarrow as pa

        try:
            loaded = load(self, split, *args, **kwargs)
        except pa.ArrowException as e:  # a Parquet file of the data (the embedded world's) cut short
            from drm.base.atomic import shown

            raise DRMError(f"split {split!r} of data.root {shown(self.root)} cannot be read ({e}): a file of it is "
                           "truncated or corrupt; for the embedded world rerun the stage that makes it: "
                           "`dvc repro embedded/dvc.yaml:world`, else replace the file with a good copy") from None
        return check_split_contents(self, loaded)

    checked._checked = True
    return checked


@dataclass
class DataSource:
    """Base class; subclasses fill classnames/splits and implement `load` (every subclass's
    `load` checks what it returns: samples present, labels within the class list)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        load = cls.__dict__.get("load")
        if load is not None and not getattr(load, "_checked", False):
            cls.load = _checked_load(load)

    root: Path
    classnames: list[str] = field(default_factory=list)
    splits: dict[str, str] = field(default_factory=dict)  # split name -> role
    group_columns: list[str] = field(default_factory=list)
    core_traits: dict[str, list[str]] | None = None
    headline: str = "accuracy"  # the benchmark's headline metric name

    def load(self, split: str, transform: Callable | None = None) -> Split:
        raise NotImplementedError

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ConfigError(f"split {split!r} is not in this data source; available: {list(self.splits)}")

    def benchmark_metrics(self, split: str, meta: pd.DataFrame, y_pred) -> dict[str, float]:
        """Metrics as the benchmark defines them (e.g. WILDS' eval); {} for none extra."""
        return {}

    def class_mask(self, split: str):
        """Boolean array over the classes a split is scored over (None: all), e.g. the 200
        classes of ImageNet-R: the other classes' logits are masked before the argmax."""
        return None

    def project_predictions(self, split: str, pred):
        """Map predicted classes to the split's label space (identity; ObjectNet differs)."""
        return pred

    # splits whose mean is the benchmark's OOD headline (evaluate adds it as split `ood_mean`)
    ood_average: list[str] = field(default_factory=list)
