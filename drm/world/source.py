"""The embedded world as a DataSource (Parquet per split, written by the `world` stage)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from torch.utils.data import Dataset

from drm.datasets.base import DataSource, Split
from drm.base.errors import require


class ParquetImageDataset(Dataset):
    """Images stored as raw uint8 RGB bytes in a Parquet column, decoded per item."""

    def __init__(self, images: list[bytes], labels, size: int, transform=None):
        self.images, self.labels, self.size, self.transform = images, labels, size, transform

    def __len__(self):
        return len(self.images)

    def image(self, i) -> Image.Image:
        arr = np.frombuffer(self.images[i], np.uint8).reshape(self.size, self.size, 3)
        return Image.fromarray(arr)

    def __getitem__(self, i):
        img = self.image(i)
        return (self.transform(img) if self.transform else img), int(self.labels[i])


@dataclass
class WorldSource(DataSource):
    image_size: int = 32
    config: dict | None = None  # the world params it was rendered with (world.json "config")

    @classmethod
    def open(cls, root):
        root = Path(root)
        meta = json.loads(require(root / "world.json", "world").read_text())
        return cls(root=root, classnames=meta["classnames"], splits=dict(meta["splits"]),
                   group_columns=meta["group_columns"], core_traits=meta["core_traits"],
                   image_size=meta["image_size"], config=meta.get("config"))

    def table(self, split: str):
        path = require(self.root / f"{split}.parquet", "world")
        return pq.read_table(path)

    def load(self, split: str, transform=None) -> Split:
        if split != "pretrain":
            self.check_split(split)
        table = self.table(split)
        images = table.column("image").to_pylist()
        meta = table.drop(["image"]).to_pandas()
        ds = ParquetImageDataset(images, meta["y"].to_numpy(), self.image_size, transform)
        return Split(split, self.splits.get(split, "pretrain"), meta, ds)
