"""Stage `diagnostics`: measure the embedded world's premises (skipped for real data).

The probes render fresh images of the world with the params it was rendered with, which
data/world/world.json records: the stage tracks the world's data (a dependency), not the
`world` params section, so a real-data params file needs no `world` section."""
from __future__ import annotations

import json
from pathlib import Path

from drm.base.params import DataConfig, ModelConfig, StageParams


class Params(StageParams):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()


def world_config(source):
    """The WorldConfig the world in data.root was rendered with (its world.json records it)."""
    from drm.base.errors import DRMError
    from drm.world.config import WorldConfig

    if source.config is None:
        raise DRMError(f"{source.root / 'world.json'} does not record the params it was rendered with (made by "
                       "an older version): rerun the world stage, `dvc repro -f embedded/dvc.yaml:world`")
    return WorldConfig(**source.config)


def run(params: Params, *, base: Path, zeroshot: Path, out_json: Path, out_md: Path, progress: bool) -> dict:
    """The premises are measured on fresh renders of the embedded world, so only there."""
    from drm.base.clip import load_model
    from drm.datasets.registry import open_source
    from drm.diagnostics.probes import run_diagnostics
    from drm.zeroshot.run import load_heads

    if params.data.source != "world":
        note = f"diagnostics skipped: they render the embedded world, and data.source is {params.data.source!r}"
        from drm.base.atomic import write_text

        for path, text in ((out_json, json.dumps({"skipped": note}) + "\n"), (out_md, f"_{note}_\n")):
            write_text(path, text)
        return {"skipped": note}
    source = open_source(params.data, base)
    model, _, eval_tf, _ = load_model(params.model, device="cpu", base_dir=base)
    d = run_diagnostics(model, eval_tf, source=source, heads=load_heads(zeroshot), world_cfg=world_config(source),
                        zs_dir=zeroshot, out_json=out_json, out_md=out_md, progress=progress)
    return {"probe_ood_val": d["probe"]["ood_val"]["probe_accuracy"],
            "cd_more_core_than_df": d["swap"]["cd_more_core_than_df"]}
