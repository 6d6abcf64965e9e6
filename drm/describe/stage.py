"""Stage `describe`: concept descriptions per class -> the descriptions file."""
from __future__ import annotations

import warnings
from pathlib import Path

from drm.base.params import DataConfig, StageParams
from drm.describe.config import DescribeConfig


class Params(StageParams):
    describe: DescribeConfig = DescribeConfig()
    data: DataConfig = DataConfig()


def context(params: Params, base: Path, progress: bool = True):
    from drm.datasets.registry import open_source
    from drm.describe import DescribeContext

    source = open_source(params.data, base)
    return DescribeContext(source.classnames, source.core_traits, Path(base), progress=progress)


def run(params: Params, *, base: Path, out: Path, tracked_dir: Path, progress: bool) -> dict:
    """tracked_dir: the folder DVC tracks as this stage's description-file dependency; files
    outside it are read but their edits are not seen by DVC, so say so."""
    from drm.describe import run_describe

    outside = [v for v in params.describe.input_files()
               if not (base / v).resolve().is_relative_to(tracked_dir.resolve())]
    if outside:
        warnings.warn(f"describe file(s) {outside} outside {tracked_dir}/: DVC does not see edits to them; "
                      f"after editing, rerun with `dvc repro -f -s describe`, or move them into {tracked_dir}/",
                      stacklevel=2)
    desc = run_describe(params.describe, context(params, base, progress), out)
    return {"classes": len(desc), "descriptions": sum(map(len, desc.values())), "out": str(out)}


def plan(params: Params, *, base: Path) -> str:
    """What describe would request (openai provider), without sending anything."""
    from drm.describe import PROVIDERS

    ctx = context(params, base, progress=False)
    provider = PROVIDERS[params.describe.provider](params.describe, ctx)
    if not hasattr(provider, "dry_run"):
        return f"describe: provider {params.describe.provider!r} sends no requests; nothing to plan"
    return provider.dry_run(ctx.classnames)
