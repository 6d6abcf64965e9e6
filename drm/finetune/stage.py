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


def tracked_params(params: Params, method: str, seed: int) -> dict:
    """The resolved values of what dvc.yaml tracks for finetune@{method}-{seed} (defaults
    filled in): a checkpoint made under other values is not resumed."""
    return {"seed": seed, "method": method, "methods": {method: params.methods[method].model_dump()},
            "finetune": params.finetune.model_dump(exclude={"methods"}),
            "zeroshot": {"templates": list(params.zeroshot.templates)}, "wise": params.wise.model_dump(),
            "model": params.model.model_dump(), "data": params.data.model_dump()}


def checkpoint_folder(params: Params, *, base: Path, method: str, seed: int, folder: Path, zeroshot: Path,
                      descriptions: Path, script: Path):
    """The run's Checkpoints (drm.finetune.checkpoint) in folder/<method>-s<seed>."""
    from drm.finetune.checkpoint import Checkpoints, Identity, file_digest, folder_digest

    inputs = {"zeroshot heads": file_digest(zeroshot / "heads.safetensors"),
              "zeroshot core estimates": file_digest(zeroshot / "core.parquet"),
              "zeroshot soft targets": file_digest(zeroshot / "core_soft.npy"),
              "zeroshot df targets": file_digest(zeroshot / "df_soft.npy"),
              "descriptions": file_digest(descriptions)}
    local = Path(params.model.weights)  # the model folder (model.weights), whatever model.name is
    inputs["pre-trained model folder"] = folder_digest(local if local.is_absolute() else base / local)
    identity = Identity(method=method, loss=params.methods[method].loss, seed=seed,
                        params=tracked_params(params, method, seed), script=script, inputs=inputs)
    return Checkpoints(folder / f"{method}-s{seed}", identity, every_steps=params.runtime.checkpoint_steps,
                       every_minutes=params.runtime.checkpoint_minutes)


def run(params: Params, *, base: Path, method: str, seed: int, zeroshot: Path, descriptions: Path, out: Path,
        progress: bool, checkpoints: Path | None = None, script: Path | None = None) -> dict:
    """checkpoints: the folder of checkpoint folders (None: no checkpoints, no resume);
    script: the stage script (its import closure is the code a checkpoint must match)."""
    from drm.base.clip import load_model
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
    pretrained, train_tf, eval_tf, tokenizer = load_model(params.model, device="cpu", base_dir=base)
    texts = ClassTexts.build(classnames=source.classnames, templates=params.zeroshot.templates,
                             descriptions=load_descriptions(descriptions, source.classnames))
    setup = Setup(pretrained=pretrained, heads=heads, texts=texts, tokenizer=tokenizer, source=source,
                  train_split=next(s for s, r in source.splits.items() if r == "train"), eval_transform=eval_tf,
                  runtime=params.runtime, progress=progress)
    ckpt = None
    if checkpoints is not None:
        ckpt = checkpoint_folder(params, base=base, method=method, seed=seed, folder=checkpoints, zeroshot=zeroshot,
                                 descriptions=descriptions,
                                 script=script or Path(__file__).resolve().parents[2] / "stages" / "finetune.py")
    return run_finetune(name=method, method=params.methods[method], seed=seed, setup=setup, train_transform=train_tf,
                        cfg=params.finetune, wise=params.wise, zeroshot_dir=zeroshot,
                        paths=RunPaths(out), checkpoints=ckpt)
