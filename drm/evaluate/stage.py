"""Stage `evaluate`: df/cd/dual metrics for zero-shot and every run, from stored logits."""
from __future__ import annotations

from pathlib import Path

from pydantic import field_validator

from drm.base.params import DataConfig, StageParams
from drm.evaluate.config import EvaluateConfig
from drm.finetune.config import FinetuneConfig, check_seeds


class Params(StageParams):
    evaluate: EvaluateConfig = EvaluateConfig()
    seeds: list[int] = [0, 1, 2]
    finetune: FinetuneConfig = FinetuneConfig()  # which methods ran
    data: DataConfig = DataConfig()

    _seeds = field_validator("seeds")(check_seeds)


def run(params: Params, *, base: Path, zeroshot: Path, runs: Path, out_csv: Path, out_json: Path,
        progress: bool) -> dict:
    from drm.datasets.registry import open_source
    from drm.evaluate.run import run_evaluate

    source = open_source(params.data, base)
    run_dirs = {(m, s): runs / f"{m}-s{s}" for m in params.finetune.methods for s in params.seeds}
    frame = run_evaluate(source, zeroshot, run_dirs, params.evaluate, out_csv, out_json, progress)
    return {"rows": len(frame), "out": str(out_json)}
