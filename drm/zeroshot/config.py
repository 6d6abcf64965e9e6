"""Parameters of the zero-shot heads and core estimates (params.yaml: zeroshot)."""
from __future__ import annotations

from pydantic import Field, model_validator

from drm.base.params import Strict


class ZeroshotConfig(Strict):
    # df head: the class name in each template, embeddings averaged per class
    templates: list[str] = ["a photo of a {c}.", "a picture of a {c}.", "an image of a {c}."]
    batch_size: int = Field(512, ge=1)
    ratio_clip: float = Field(5.0, gt=0)  # the ratio estimator's weights are clipped to [0, ratio_clip]

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
