"""Parameters shared by every fine-tuning method (params.yaml: finetune, wise). A method's own
knobs live on its class in drm.finetune.methods."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from drm.base.params import Strict


class FinetuneConfig(Strict):
    methods: list[str] = ["erm", "drm", "distill", "lpft", "flyp"]  # names under `methods`, each x seeds
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(3e-4, gt=0, le=1)
    wd: float = Field(0.1, ge=0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16 needs CUDA
    # Gradient accumulation: each optimizer step sums the gradients of accum_steps equal
    # micro-batches of batch_size / (processes x accum_steps) images. The cross-entropy and
    # WRM terms are means over images, so the step's gradient is the one of the whole batch;
    # FLYP's contrastive term is not: each micro-batch's images see only that micro-batch's
    # texts as negatives (fewer negatives, a different loss), see docs/scale.md.
    accum_steps: int = Field(1, ge=1)


class WiseConfig(Strict):
    # WiSE-FT: predictions for each alpha (1.0 = the fine-tuned model, 0.0 = zero-shot).
    alphas: list[float] = [0.0, 0.25, 0.5, 0.75, 1.0]
    batch_size: int = Field(512, ge=1)  # images per prediction batch

    @model_validator(mode="after")
    def _alphas(self):
        if not self.alphas or any(not 0 <= a <= 1 for a in self.alphas):
            raise ValueError("wise.alphas must be a non-empty list of numbers in [0, 1]")
        if 1.0 not in self.alphas:
            raise ValueError("wise.alphas must include 1.0 (the fine-tuned model itself)")
        return self


def check_seeds(seeds: list[int]) -> list[int]:
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError("seeds must be a non-empty list of distinct integers")
    return seeds
