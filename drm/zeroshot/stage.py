"""Stage `zeroshot`: df/cd heads of the pre-trained model, logits for every split, core estimates."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from drm.base.params import DataConfig, ModelConfig, StageParams
from drm.evaluate.config import EvaluateConfig
from drm.report.config import ReportConfig
from drm.zeroshot.config import ZeroshotConfig


class Params(StageParams):
    zeroshot: ZeroshotConfig = ZeroshotConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    checked: ClassVar[tuple[str, ...]] = ("evaluate", "report")  # split names, checked before any work


def run(params: Params, *, base: Path, descriptions: Path, out: Path, progress: bool) -> dict:
    from drm.base.clip import load_model
    from drm.datasets.registry import open_source
    from drm.describe import load_descriptions
    from drm.evaluate.config import check_against_source
    from drm.zeroshot.heads import ClassTexts
    from drm.zeroshot.run import run_zeroshot

    source = open_source(params.data, base)
    check_against_source(source, data_source=params.data.source, evaluate=params.evaluate, report=params.report)
    texts = ClassTexts.build(classnames=source.classnames, templates=params.zeroshot.templates,
                             descriptions=load_descriptions(descriptions, source.classnames))
    from drm.base.torch_utils import resolve_device

    model, _, eval_tf, tokenizer = load_model(params.model, device=str(resolve_device(params.runtime.device)),
                                              base_dir=base)
    return run_zeroshot(model, tokenizer, eval_tf, source=source, texts=texts, cfg=params.zeroshot, out_dir=out,
                        runtime=params.runtime, progress=progress)
