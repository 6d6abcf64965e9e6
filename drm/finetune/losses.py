"""Training objectives as pure functions of logits, labels and the batch's core estimates
(columns of core.parquet). Which method combines which terms: drm.finetune.methods.

- erm_loss: cross-entropy on the df logits.
- wrm_loss: DRM's worst-case risk on the cd logits: weighted/ratio: mean_i w_i * CE(cd_i, y_i);
  soft: mean_i CE(cd_i, p_c(.|x_i)), the targets optionally sharpened: softmax(pre-trained
  cd logits / temperature).
- distill_loss (control): CE(df, y) + lam * CE(df, p_df of the pre-trained model).
- flyp_contrastive: FLYP's CLIP loss between the batch's images and one prompt per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from drm.base.errors import ConfigError


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits.float(), -1)).sum(-1).mean()


def erm_loss(df_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(df_logits.float(), y)


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) from p = softmax(logits): p^(1/T), renormalised (T=1: p itself)."""
    if temperature == 1.0:
        return p
    logp = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)) / temperature
    return torch.softmax(logp, -1)


def wrm_loss(cd_logits: torch.Tensor, y: torch.Tensor, core: dict, *, estimator: str,
             temperature: float = 1.0) -> torch.Tensor:
    if estimator == "soft":
        return soft_cross_entropy(cd_logits, sharpen(core["soft"], temperature))
    if estimator in ("weighted", "ratio"):
        w = core[estimator]
        return (w * F.cross_entropy(cd_logits.float(), y, reduction="none")).mean()
    raise ConfigError(f"unknown estimator {estimator!r}; choose one of weighted, soft, ratio")


def distill_loss(df_logits: torch.Tensor, y: torch.Tensor, core: dict, *, lam: float,
                 temperature: float = 1.0) -> torch.Tensor:
    return F.cross_entropy(df_logits.float(), y) + lam * soft_cross_entropy(
        df_logits, sharpen(core["df_soft"], temperature))


def flyp_contrastive(image: torch.Tensor, text: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss between unit image and text embeddings of one batch (text i is a
    prompt of image i's class). Classes repeat within a batch, so every same-class pair is a
    positive: the target of a row is uniform over the entries of its class (the plain
    diagonal target would push an image away from identical prompts of its own class)."""
    logits = scale * image @ text.t()
    same = (y[:, None] == y[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (soft_cross_entropy(logits, target) + soft_cross_entropy(logits.t(), target))
