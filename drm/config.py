"""Typed, validated parameters: params.yaml is checked once, at load, against these models.

Every section is a pydantic model with extra="forbid": a misspelt key, a wrong type or an
out-of-range value fails with a message naming the key and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drm.describe.openai_config import OpenAIConfig
from drm.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A torch device name: cpu, cuda, cuda:N or mps.
Device = Annotated[str, Field(pattern=r"^(cpu|cuda(:[0-9]+)?|mps)$")]


class WorldConfig(Strict):
    """The embedded synthetic world (see drm/world.py for what each knob does)."""

    seed: int = 0
    canvas: int = Field(64, ge=16, le=256)
    image_size: int = Field(32, ge=8, le=224)
    n_pretrain: int = Field(24000, ge=16)
    n_train: int = Field(1000, ge=8)
    n_id_val: int = Field(500, ge=8)
    n_id_test: int = Field(1000, ge=8)
    n_ood_val: int = Field(1000, ge=8)
    n_ood_test: int = Field(2000, ge=8)
    spurious_rate: float = Field(0.95, ge=0.0, le=1.0)
    caption_context_rate: float = Field(0.7, ge=0.0, le=1.0)
    contrast: tuple[float, float] = (0.3, 1.0)
    noise: tuple[float, float] = (0.05, 0.08)
    radius: tuple[float, float] = (0.30, 0.45)  # object radius as a fraction of the canvas
    train_styles: list[str] = ["filled"]
    unclear_rate: float = Field(0.15, ge=0.0, le=1.0)  # small/faint objects in downstream splits

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("contrast", "noise", "radius"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 1:
                raise ValueError(f"world.{name} must be [low, high] with 0 <= low <= high <= 1")
        from drm.world import STYLES

        if self.canvas % self.image_size:
            raise ValueError(f"world.canvas ({self.canvas}) must be a multiple of world.image_size ({self.image_size})")
        bad = [s for s in self.train_styles if s not in STYLES]
        if bad or not self.train_styles or len(set(self.train_styles)) == len(STYLES):
            raise ValueError(f"world.train_styles must be a non-empty proper subset of {STYLES}")
        return self


class PretrainConfig(Strict):
    arch: dict = Field(default_factory=lambda: {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 64},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
    })
    steps: int = Field(600, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(2e-3, gt=0, le=1)
    wd: float = Field(0.1, ge=0)
    warmup: int = Field(50, ge=0)
    seed: int = 0
    device: Device = "cpu"
    threads: int = Field(0, ge=0)  # 0: torch's default


class ModelConfig(Strict):
    """The pre-trained model every downstream stage starts from: any open_clip name."""

    name: str = "local-dir:models/pretrained"  # e.g. ViT-B-16
    pretrained: str | None = None  # e.g. openai (ignored for local-dir:)


class DataConfig(Strict):
    source: Literal["world", "imagefolder", "iwildcam", "fmow", "imagenet"] = "world"
    root: str = "data/world"
    num_workers: int = Field(0, ge=0)


class DescribeConfig(Strict):
    provider: str = "world"
    per_class: int = Field(5, ge=1, le=100)
    file: str | None = None
    overrides: str | None = None
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)

    @model_validator(mode="after")
    def _provider(self):
        from drm.describe import PROVIDERS

        if self.provider not in PROVIDERS:
            raise ValueError(f"describe.provider {self.provider!r} is unknown; choose one of {sorted(PROVIDERS)}")
        if self.provider == "file" and not self.file:
            raise ValueError("describe.provider 'file' needs describe.file (path to a JSON file)")
        return self


class ZeroshotConfig(Strict):
    templates: list[str] = ["a photo of a {c}.", "a picture of a {c}.", "an image of a {c}."]
    batch_size: int = Field(512, ge=1)
    ratio_clip: float = Field(5.0, gt=0)
    device: Device = "cpu"

    @model_validator(mode="after")
    def _templates(self):
        if not self.templates or any("{c}" not in t for t in self.templates):
            raise ValueError("zeroshot.templates must be a non-empty list of strings containing '{c}'")
        for t in self.templates:
            try:
                t.format(c="x")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"zeroshot.templates entry {t!r} is not a valid template ({e}); "
                                 "use {c} for the class name and {{ }} for literal braces") from None
        return self


class MethodConfig(Strict):
    loss: Literal["erm", "drm", "distill", "lpft", "flyp"]
    lam: float = Field(1.0, ge=0)
    estimator: Literal["weighted", "soft", "ratio"] = "soft"
    # drm soft / distill: temperature of the targets, softmax(pre-trained logits / temperature)
    temperature: float = Field(1.0, gt=0, le=10)
    # drm: its ERM term, cross-entropy on the df head (ce) or FLYP's contrastive loss (flyp)
    erm_term: Literal["ce", "flyp"] = "ce"
    lr_scale: float = Field(1.0, gt=0, le=100)  # this method's lr = finetune.lr * lr_scale
    lp_c: float = Field(1.0, gt=0)  # lpft: inverse L2 strength of the logistic-regression probe

    @model_validator(mode="after")
    def _no_ignored_keys(self):
        used = {"erm": set(), "lpft": {"lp_c"}, "drm": {"lam", "estimator", "erm_term", "temperature"}, "distill": {"lam", "temperature"},
                "flyp": set()}[self.loss]
        changed = {k for k in ("lam", "estimator", "lp_c", "erm_term", "temperature") if getattr(self, k) != type(self).model_fields[k].default}
        ignored = changed - used
        if ignored:
            raise ValueError(f"{sorted(ignored)} have no effect with loss {self.loss!r}; remove them")
        if self.loss == "drm" and self.estimator != "soft" and "temperature" in changed:
            raise ValueError(f"temperature has no effect with estimator {self.estimator!r} (only soft); remove it")
        return self

    @property
    def trains_text_tower(self) -> bool:
        """FLYP and DRM with the FLYP term train the whole CLIP (drm.models.TextTowerClassifier)."""
        return self.loss == "flyp" or self.erm_term == "flyp"


# The methods and comparisons of the default run, as in params.yaml (chosen on validation,
# docs/selection.md); a params file that leaves these keys out gets the same.
DEFAULT_METHODS: dict[str, dict] = {
    "erm": {"loss": "erm"},
    "drm": {"loss": "drm", "lam": 30.0, "estimator": "soft"},
    "drm_ratio": {"loss": "drm", "lam": 1.0, "estimator": "ratio"},
    "drm_weighted": {"loss": "drm", "lam": 1.0, "estimator": "weighted"},
    "distill": {"loss": "distill", "lam": 3.0},
    "lpft": {"loss": "lpft", "lr_scale": 0.1, "lp_c": 1.0},
    "flyp": {"loss": "flyp"},
    "drm_flyp": {"loss": "drm", "lam": 30.0, "estimator": "soft", "erm_term": "flyp"},
}


class FinetuneConfig(Strict):
    methods: list[str] = ["erm", "drm", "distill", "drm_ratio", "lpft", "flyp", "drm_flyp"]
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(3e-4, gt=0, le=1)
    wd: float = Field(0.1, ge=0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    device: Device = "cpu"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    threads: int = Field(0, ge=0)


class WiseConfig(Strict):
    alphas: list[float] = [0.0, 0.25, 0.5, 0.75, 1.0]

    @model_validator(mode="after")
    def _alphas(self):
        if not self.alphas or any(not 0 <= a <= 1 for a in self.alphas):
            raise ValueError("wise.alphas must be a non-empty list of numbers in [0, 1]")
        if 1.0 not in self.alphas:
            raise ValueError("wise.alphas must include 1.0 (the fine-tuned model itself)")
        return self


class EvaluateConfig(Strict):
    # Dual inference weight of the df head; "val": chosen per method on select_splits.
    beta: float | Literal["val"] = "val"
    beta_grid: list[float] = [round(0.1 * i, 1) for i in range(11)]
    select_splits: list[str] = Field(["id_val", "ood_val"], min_length=2, max_length=2)  # [ID, OOD]
    beta_id_tolerance: float = Field(2.0, ge=0, le=100)  # points of ID-val accuracy beta may cost
    group_by: list[str] = ["style", "bg", "clarity"]

    @model_validator(mode="after")
    def _beta(self):
        if isinstance(self.beta, float) and not 0 <= self.beta <= 1:
            raise ValueError("evaluate.beta must be in [0, 1] or 'val'")
        if not self.beta_grid or any(not 0 <= b <= 1 for b in self.beta_grid):
            raise ValueError("evaluate.beta_grid must be a non-empty list of numbers in [0, 1]")
        return self


class ReportConfig(Strict):
    id_split: str = "id_test"
    ood_split: str = "ood_test"
    head: Literal["df", "cd", "dual"] = "dual"
    # [method, baseline] pairs for the same-head comparison table
    comparisons: list[list[str]] = [["drm", "erm"], ["drm", "distill"], ["drm", "drm_ratio"], ["drm", "lpft"],
                                    ["drm_flyp", "flyp"], ["drm_flyp", "distill"]]

    @model_validator(mode="after")
    def _pairs(self):
        if any(len(p) != 2 for p in self.comparisons):
            raise ValueError("report.comparisons must be a list of [method, baseline] pairs")
        return self


class Params(Strict):
    seeds: list[int] = [0, 1, 2]
    world: WorldConfig = Field(default_factory=WorldConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    describe: DescribeConfig = Field(default_factory=DescribeConfig)
    zeroshot: ZeroshotConfig = Field(default_factory=ZeroshotConfig)
    methods: dict[str, MethodConfig] = Field(default_factory=lambda: {
        name: MethodConfig(**cfg) for name, cfg in DEFAULT_METHODS.items()})
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    wise: WiseConfig = Field(default_factory=WiseConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @model_validator(mode="after")
    def _methods(self):
        arch_size = self.pretrain.arch.get("vision_cfg", {}).get("image_size")
        if arch_size is not None and arch_size != self.world.image_size:
            raise ValueError(f"pretrain.arch.vision_cfg.image_size ({arch_size}) must equal "
                             f"world.image_size ({self.world.image_size})")
        unknown = [m for m in self.finetune.methods if m not in self.methods]
        if unknown:
            raise ValueError(
                f"finetune.methods names {unknown}, which are not defined under 'methods' "
                f"(defined: {sorted(self.methods)})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return self


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = ("unknown key (check the spelling; see params.yaml for the allowed keys"
                   + (", and docs/describe-openai.md for describe.openai)" if e["loc"][:2] == ("describe", "openai") else ")"))
        if e["type"] == "string_pattern_mismatch" and e["loc"] and e["loc"][-1] == "device":
            msg = "must be cpu, cuda, cuda:N or mps"
        lines.append(f"  {loc}: {msg} (got {e.get('input')!r})" if e["type"] != "extra_forbidden"
                     else f"  {loc}: {msg}")
    return "invalid parameters:\n" + "\n".join(lines)


def parse_params(raw: dict) -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as e:
        raise ConfigError(_format(e)) from None


def load_params(path="params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    return parse_params(raw)
