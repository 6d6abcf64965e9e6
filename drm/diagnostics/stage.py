"""Stage `diagnostics`: measure the embedded world's premises (skipped for real data)."""
from __future__ import annotations

import json
from pathlib import Path

from drm.base.params import DataConfig, ModelConfig, StageParams
from drm.world.config import WorldConfig


class Params(StageParams):
    world: WorldConfig = WorldConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()


def run(params: Params, *, base: Path, zeroshot: Path, out_json: Path, out_md: Path, progress: bool) -> dict:
    """The premises are measured on fresh renders of the embedded world, so only there."""
    from drm.base.clip import load_pretrained
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
    model, _, eval_tf, _ = load_pretrained(params.model.name, params.model.pretrained, device="cpu", base_dir=base)
    d = run_diagnostics(model, eval_tf, source=source, heads=load_heads(zeroshot), world_cfg=params.world,
                        zs_dir=zeroshot, out_json=out_json, out_md=out_md, progress=progress)
    return {"probe_ood_val": d["probe"]["ood_val"]["probe_accuracy"],
            "cd_more_core_than_df": d["swap"]["cd_more_core_than_df"]}
