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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drm.base.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A torch device name: cpu, cuda, cuda:N or mps.
Device = Annotated[str, Field(pattern=r"^(cpu|cuda(:[0-9]+)?|mps)$")]


class ModelConfig(Strict):
    """The pre-trained model every downstream stage starts from: any open_clip name."""

    name: str = "local-dir:models/pretrained"  # e.g. ViT-B-16
    pretrained: str | None = None  # e.g. openai (ignored for local-dir:)


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
