"""Stage `world`: render the embedded synthetic world into one folder."""
from __future__ import annotations

from pathlib import Path

from drm.base.params import StageParams
from drm.world.config import WorldConfig


class Params(StageParams):
    world: WorldConfig = WorldConfig()


def run(params: Params, *, out: Path, progress: bool) -> dict:
    """Render into a folder beside `out`, renamed into place once complete (drm.base.atomic)."""
    from drm.base.atomic import atomic_dir
    from drm.world.render import generate

    with atomic_dir(out) as tmp:
        meta = generate(params.world, tmp, progress=progress)
    return {"classes": len(meta["classnames"]), "out": str(out)}
