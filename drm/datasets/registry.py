"""Data sources by name (params.yaml: data.source), each imported only when chosen."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from drm.base.errors import ConfigError
from drm.datasets.base import DataSource


def _world(cfg, base_dir):
    from drm.world.source import WorldSource

    return WorldSource.open(Path(base_dir) / cfg.root)


def _imagefolder(cfg, base_dir):
    from drm.datasets.folder import ImageFolderSource

    return ImageFolderSource.open(Path(base_dir) / cfg.root)


def _iwildcam(cfg, base_dir):
    from drm.datasets.wilds_data import IWildCamSource

    return IWildCamSource.open(Path(base_dir) / cfg.root)


def _fmow(cfg, base_dir):
    from drm.datasets.wilds_data import FMoWSource

    return FMoWSource.open(Path(base_dir) / cfg.root)


def _imagenet(cfg, base_dir):
    from drm.datasets.imagenet import ImageNetSource

    return ImageNetSource.open(Path(base_dir) / cfg.root)


SOURCES: dict[str, Callable] = {
    "world": _world,
    "imagefolder": _imagefolder,
    "iwildcam": _iwildcam,
    "fmow": _fmow,
    "imagenet": _imagenet,
}


def open_source(cfg, base_dir=".") -> DataSource:
    """Open the data source named by cfg.source (params.yaml: data)."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"data.source {cfg.source!r} is unknown; choose one of {sorted(SOURCES)}")
    return SOURCES[cfg.source](cfg, base_dir)
