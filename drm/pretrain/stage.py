"""Stage `pretrain`: contrastively pre-train the embedded CLIP on the world's captions."""
from __future__ import annotations

from pathlib import Path

from drm.base.params import StageParams
from drm.pretrain.config import PretrainConfig


class Params(StageParams):
    pretrain: PretrainConfig = PretrainConfig()


def run(params: Params, *, world: Path, out: Path, run_info: Path, live_dir: Path, progress: bool) -> dict:
    from drm.base.errors import ConfigError
    from drm.base.tracking import live_logger
    from drm.pretrain.train import pretrain
    from drm.world.source import WorldSource

    source = WorldSource.open(world)
    arch_size = params.pretrain.arch.get("vision_cfg", {}).get("image_size")
    if arch_size is not None and arch_size != source.image_size:
        raise ConfigError(f"pretrain.arch.vision_cfg.image_size ({arch_size}) must equal the world's "
                          f"image_size ({source.image_size}, world.image_size in params.yaml)")
    with live_logger(str(live_dir)) as live:
        return pretrain(params.pretrain, source.load("pretrain"), out, source.image_size, runtime=params.runtime,
                        progress=progress, live=live, run_info=run_info)
