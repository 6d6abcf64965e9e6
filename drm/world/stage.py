"""Stage `world`: render the embedded synthetic world into one folder."""
from __future__ import annotations

from pathlib import Path

from drm.base.params import StageParams
from drm.world.config import WorldConfig


class Params(StageParams):
    world: WorldConfig = WorldConfig()


def run(params: Params, *, out: Path, progress: bool) -> dict:
    from drm.world.render import generate

    meta = generate(params.world, out, progress=progress)
    return {"classes": len(meta["classnames"]), "out": str(out)}
