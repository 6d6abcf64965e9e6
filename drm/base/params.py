"""params.yaml, validated at the edge: each stage reads the sections it declares.

A stage's parameters are a `StageParams` subclass whose fields are params.yaml sections
(each a pydantic model with extra="forbid": a misspelt key, a wrong type or an
out-of-range value fails with a message naming the key and what is allowed). The fields
a stage *tracks* are the ones its results depend on, and are exactly the `params` that
dvc.yaml lists for it (tests/test_dependencies.py checks both ways); `checked` sections
are read only to fail early (e.g. a split name the report will need), and `runtime` holds
settings that never shape results (device, threads, workers, progress), so DVC tracks
none of it and toggling it reruns nothing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drm.base.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A torch device name: cpu, cuda, cuda:N or mps.
Device = Annotated[str, Field(pattern=r"^(cpu|cuda(:[0-9]+)?|mps)$")]


# OpenAI's spellings of CLIP models -> open_clip's names (open_clip has no "/" or "@").
OPENAI_NAMES = {"RN50": "RN50", "RN101": "RN101", "RN50x4": "RN50x4", "RN50x16": "RN50x16",
                "RN50x64": "RN50x64", "ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14",
                "ViT-L/14@336px": "ViT-L-14-336", "ViT-L/14@336": "ViT-L-14-336"}
LOCAL_DIR = "local-dir:"


def open_clip_name(name: str) -> str | None:
    """open_clip's name for a model written in OpenAI's spelling (ViT-B/16 -> ViT-B-16), or None."""
    if name in OPENAI_NAMES and OPENAI_NAMES[name] != name:
        return OPENAI_NAMES[name]
    if "/" in name and not name.startswith(("hf-hub:", LOCAL_DIR)):
        guess = name.replace("/", "-").replace("@336px", "-336").replace("@", "-").replace("px", "")
        return guess
    return None


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(a) == os.path.normpath(b)


class ModelConfig(Strict):
    """The pre-trained model every downstream stage starts from, and the folder that holds it.

    `weights` is the local open_clip model folder the stages load and DVC tracks as their
    model dependency (dvc.yaml: ${model.weights}): models/pretrained, which the embedded
    pipeline's `pretrain` stage writes, or a folder you fetch once (a real model:
    `python -m pipeline.presets fetch-model`, which downloads `name` with `pretrained` through
    open_clip and saves it there). `name` says what the folder holds: `local-dir:<weights>`
    (your own or the embedded folder), or an open_clip name (ViT-B-16, ViT-L-14, ViT-L-14-336,
    hf-hub:org/repo) with `pretrained` its open_clip tag (openai, laion2b_s34b_b88k, ...)."""

    name: str = "local-dir:models/pretrained"  # e.g. ViT-B-16 (open_clip's spelling, not ViT-B/16)
    pretrained: str | None = None  # e.g. openai (none for local-dir:)
    weights: str = "models/pretrained"  # the local model folder (a DVC dependency of the stages)

    @model_validator(mode="after")
    def _consistent(self):
        better = open_clip_name(self.name)
        if better:
            raise ValueError(f"model.name {self.name!r} is OpenAI's spelling; open_clip (which loads the model) "
                             f"calls it {better!r}: write name: {better} (with pretrained: openai for OpenAI's "
                             f"weights)")
        if not self.weights.strip():
            raise ValueError("model.weights must be the path of the local model folder")
        if self.name.startswith(LOCAL_DIR):
            folder = self.name[len(LOCAL_DIR):]
            if not folder:
                raise ValueError("model.name 'local-dir:' needs a folder: local-dir:PATH")
            if not _same_path(folder, self.weights):
                raise ValueError(f"model.name {self.name!r} loads folder {folder!r} but model.weights is "
                                 f"{self.weights!r}: set weights: {folder} (DVC tracks that folder as the model)")
            if self.pretrained:
                raise ValueError(f"model.pretrained {self.pretrained!r} has no effect with a local-dir: model "
                                 "(the folder holds the weights): set it to null")
        elif not self.pretrained and not self.name.startswith("hf-hub:"):
            raise ValueError(f"model.pretrained is not set for open_clip model {self.name!r}: name its weights' "
                             "tag (e.g. openai; `python -c \"import open_clip; print(open_clip."
                             f"list_pretrained_tags_by_model('{self.name}'))\"` lists them): without one the "
                             "model would be randomly initialised")
        return self

    @property
    def hub(self) -> bool:
        """Whether the folder holds a fetched open_clip model (not a local-dir: one)."""
        return not self.name.startswith(LOCAL_DIR)


class DataConfig(Strict):
    source: Literal["world", "imagefolder", "iwildcam", "fmow", "imagenet"] = "world"
    root: str = "data/world"


class RuntimeConfig(Strict):
    """How a stage runs, never what it computes: no stage lists this section in dvc.yaml.
    DRM_DEVICE in the environment overrides `device` (the flow uses it to place runs on GPUs)."""

    device: Device = "cpu"
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0: torch's default
    num_workers: int = Field(0, ge=0)  # DataLoader workers
    progress: bool = True  # tqdm bars on stderr (also off with --no-progress or DRM_NO_PROGRESS=1)
    # finetune: a resumable checkpoint every N optimizer steps and/or every M minutes (0: off;
    # both 0: none), whichever comes first, and at the end of training (docs/resume.md)
    checkpoint_steps: int = Field(50, ge=0)
    checkpoint_minutes: float = Field(10.0, ge=0)
    # zeroshot and finetune: processes on this node (>1: the stage relaunches itself under
    # torch's elastic agent, one rank per process and GPU; under torchrun this is ignored)
    nproc_per_node: int = Field(1, ge=1)
    grad_checkpointing: bool = False  # finetune: open_clip activation checkpointing (less memory, ~30% slower)
    # finetune's WiSE-FT predictions: alphas' models held at once (0: all; each pass over a
    # split feeds every held model, so fewer means less memory and more passes over the data)
    wise_models_at_once: int = Field(0, ge=0)


# Every top-level key params.yaml may have; a stage validates only its own sections, so a
# misspelt section name would otherwise pass unnoticed.
SECTIONS = ("seeds", "world", "pretrain", "model", "data", "describe", "zeroshot", "methods",
            "finetune", "wise", "evaluate", "report", "runtime")


class StageParams(BaseModel):
    """Base of each stage's parameters: fields are params.yaml sections (other sections are
    ignored here and validated by the stages that read them)."""

    model_config = ConfigDict(extra="ignore")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    # Sections read only to fail early: not tracked by DVC for this stage.
    checked: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def tracked(cls) -> list[str]:
        """The sections this stage's results depend on (dvc.yaml's params for it)."""
        return [f for f in cls.model_fields if f != "runtime" and f not in cls.checked]


P = TypeVar("P", bound=BaseModel)


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


def parse(raw: dict | None, schema: type[P]) -> P:
    """Validate a params dict against a schema; unknown top-level sections are an error."""
    raw = dict(raw or {})
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"invalid parameters:\n  {', '.join(unknown)}: unknown section "
                          f"(params.yaml has {', '.join(SECTIONS)})")
    try:
        params = schema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format(e)) from None
    runtime = getattr(params, "runtime", None)
    if runtime is not None and os.environ.get("DRM_DEVICE"):
        try:
            params.runtime = RuntimeConfig(**{**runtime.model_dump(), "device": os.environ["DRM_DEVICE"]})
        except ValidationError as e:
            raise ConfigError(f"DRM_DEVICE={os.environ['DRM_DEVICE']!r}: must be cpu, cuda, cuda:N or mps") from e
    return params


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the project root or pass --params")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None


def load(path, schema: type[P]) -> P:
    return parse(read_yaml(path), schema)
