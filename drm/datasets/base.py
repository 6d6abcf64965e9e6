"""Data sources: one interface for the embedded world and real datasets.

A DataSource knows its class names, its splits (each with a role: train, id or ood) and
how to load a split as a `Split`: a torch Dataset yielding (image tensor, label) through
the model's own transform, plus a metadata frame (one row per sample, same order) with a
stable string `id`, the label `y` and group columns for worst-group metrics. Images are
read lazily, per item, so the same code path serves DataLoader workers on real data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from torch.utils.data import Dataset

from drm.base.errors import ConfigError

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


@dataclass
class DataSource:
    """Base class; subclasses fill classnames/splits and implement `load`."""

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
