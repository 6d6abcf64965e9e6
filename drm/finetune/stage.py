"""Stage `finetune`: train one method with one seed; predict with each WiSE-FT alpha."""
from __future__ import annotations

from pathlib import Path
from pydantic import Field, model_validator

from drm.base.params import DataConfig, ModelConfig, StageParams
from drm.finetune.config import FinetuneConfig, WiseConfig
from drm.finetune.methods import MethodSpec, default_methods
from drm.zeroshot.config import ZeroshotConfig


class Params(StageParams):
    methods: dict[str, MethodSpec] = Field(default_factory=default_methods)
    finetune: FinetuneConfig = FinetuneConfig()
    zeroshot: ZeroshotConfig = ZeroshotConfig()  # templates: FLYP's prompts and the rebuilt df head
    wise: WiseConfig = WiseConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()

    @model_validator(mode="after")
    def _methods_defined(self):
        unknown = [m for m in self.finetune.methods if m not in self.methods]
        if unknown:
            raise ValueError(f"finetune.methods names {unknown}, which are not defined under 'methods' "
                             f"(defined: {sorted(self.methods)})")
        return self


def run(params: Params, *, base: Path, method: str, seed: int, zeroshot: Path, descriptions: Path, out: Path,
        progress: bool) -> dict:
    from drm.base.clip import load_pretrained
    from drm.base.errors import ConfigError
    from drm.datasets.registry import open_source
    from drm.describe import load_descriptions
    from drm.finetune.methods import Setup
    from drm.finetune.train import RunPaths, run_finetune
    from drm.zeroshot.heads import ClassTexts
    from drm.zeroshot.run import load_heads

    if method not in params.methods:
        raise ConfigError(f"unknown method {method!r}; defined under `methods`: {sorted(params.methods)}")
    source = open_source(params.data, base)
    heads = load_heads(zeroshot)
    pretrained, train_tf, eval_tf, tokenizer = load_pretrained(params.model.name, params.model.pretrained,
                                                               device="cpu", base_dir=base)
    texts = ClassTexts.build(classnames=source.classnames, templates=params.zeroshot.templates,
                             descriptions=load_descriptions(descriptions, source.classnames))
    setup = Setup(pretrained=pretrained, heads=heads, texts=texts, tokenizer=tokenizer, source=source,
                  train_split=next(s for s, r in source.splits.items() if r == "train"), eval_transform=eval_tf,
                  runtime=params.runtime, progress=progress)
    return run_finetune(name=method, method=params.methods[method], seed=seed, setup=setup, train_transform=train_tf,
                        cfg=params.finetune, wise_alphas=params.wise.alphas, zeroshot_dir=zeroshot,
                        paths=RunPaths(out))
