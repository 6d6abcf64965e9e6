"""Parameters of the embedded synthetic world (params.yaml: world); see drm/world/render.py."""
from __future__ import annotations

from pydantic import Field, model_validator

from drm.base.params import Strict

STYLES = ("filled", "outline", "dashed", "striped", "sketch", "inverted")


class WorldConfig(Strict):
    seed: int = 0
    canvas: int = Field(64, ge=16, le=256)
    image_size: int = Field(32, ge=8, le=224)
    n_pretrain: int = Field(24000, ge=16)
    n_train: int = Field(1000, ge=8)
    n_id_val: int = Field(500, ge=8)
    n_id_test: int = Field(1000, ge=8)
    n_ood_val: int = Field(1000, ge=8)
    n_ood_test: int = Field(2000, ge=8)
    spurious_rate: float = Field(0.95, ge=0.0, le=1.0)  # P(background = class colour) in train and ID splits
    caption_context_rate: float = Field(0.7, ge=0.0, le=1.0)  # the same, for bare-name pre-training captions
    contrast: tuple[float, float] = (0.3, 1.0)
    noise: tuple[float, float] = (0.05, 0.08)
    radius: tuple[float, float] = (0.30, 0.45)  # object radius as a fraction of the canvas
    train_styles: list[str] = ["filled"]  # the OOD splits get every other style
    unclear_rate: float = Field(0.15, ge=0.0, le=1.0)  # small/faint objects in downstream splits

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("contrast", "noise", "radius"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi <= 1:
                raise ValueError(f"world.{name} must be [low, high] with 0 <= low <= high <= 1")
        if self.canvas % self.image_size:
            raise ValueError(f"world.canvas ({self.canvas}) must be a multiple of world.image_size ({self.image_size})")
        bad = [s for s in self.train_styles if s not in STYLES]
        if bad or not self.train_styles or len(set(self.train_styles)) == len(STYLES):
            raise ValueError(f"world.train_styles must be a non-empty proper subset of {STYLES}")
        return self
