"""Parameters of the embedded CLIP's contrastive pre-training (params.yaml: pretrain)."""
from __future__ import annotations

from pydantic import Field

from drm.base.params import Strict


class PretrainConfig(Strict):
    # open_clip model_cfg: a ModifiedResNet image tower (it learns shape fast at 32 px) and
    # a small text transformer; vision_cfg.image_size must equal the world's image_size.
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
