"""Core estimates: how much of each training label the pre-trained model explains with core
features alone (its cd zero-shot prediction). Computed once, before fine-tuning.

Estimators (drm.finetune.methods.DRM.estimator):
- weighted: per-sample weight of the true label from the pre-trained cd affinities with
  affinity normalisation: a(x, y) = cos(image x, cd text of y), divided by the largest
  a(x', y) over training images x' of class y, clamped to [0, 1].
- soft: the pre-trained cd zero-shot distribution p_c(.|x) as soft targets.
- ratio: importance weight p_c(y|x) / p_df(y|x), clipped to [0, ratio_clip].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def affinity(features: torch.Tensor, cd_head: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """a(x, y) = cos(image x, cd text of y), per sample (computed batch by batch)."""
    return (F.normalize(features, dim=-1) * cd_head[y]).sum(-1)


def affinity_weights(features: torch.Tensor, cd_head: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Affinity-normalised true-label weights in [0, 1] (features, head rows: unit vectors)."""
    return normalise_affinity(affinity(features, cd_head, y), y, cd_head.shape[0])


def normalise_affinity(a: torch.Tensor, y: torch.Tensor, C: int) -> torch.Tensor:
    """a(x, y) / max over training images x' of class y of a(x', y), clamped to [0, 1]: needs
    every training image's affinity, so it runs once they are all computed."""
    best = torch.full((C,), float("-inf")).scatter_reduce(0, y, a, reduce="amax")
    denom = best[y]
    w = torch.where(denom > 0, a / denom, torch.zeros_like(a))
    return w.clamp(0.0, 1.0)


def soft_targets(cd_logits: torch.Tensor) -> torch.Tensor:
    return cd_logits.float().softmax(-1)


def ratio_weights(cd_logits, df_logits, y, clip: float) -> torch.Tensor:
    p_c = cd_logits.float().softmax(-1).gather(1, y[:, None])[:, 0]
    p_df = df_logits.float().softmax(-1).gather(1, y[:, None])[:, 0]
    return (p_c / p_df.clamp_min(1e-12)).clamp(0.0, clip)

