"""Training objectives, selected by name (LOSSES). Each takes the model's df and cd logits,
the labels, the batch's core estimates (columns of core.parquet) and the method config.

- erm: cross-entropy on the df head.
- drm: L_ERM(df) + lam * L_WRM(cd), where L_WRM is the estimator's core-weighted risk:
  weighted/ratio: mean_i w_i * CE(cd_i, y_i); soft: mean_i CE(cd_i, p_c(.|x_i)).
- distill (control): CE(df, y) + lam * CE(df, p_df_pretrained): the pre-trained df
  predictions distilled into the df head, no cd head involved.
- lpft (LP-FT baseline): the ERM loss, from a df head initialised by a linear probe on
  frozen features (drm.finetune.linear_probe_head) and usually a smaller lr (lr_scale).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from drm.errors import ConfigError


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits.float(), -1)).sum(-1).mean()


def erm_loss(df, cd, y, core, cfg):
    return F.cross_entropy(df.float(), y)


def wrm_loss(cd, y, core, estimator: str):
    if estimator == "soft":
        return soft_cross_entropy(cd, core["soft"])
    if estimator in ("weighted", "ratio"):
        w = core[estimator]
        return (w * F.cross_entropy(cd.float(), y, reduction="none")).mean()
    raise ConfigError(f"unknown estimator {estimator!r}; choose one of weighted, soft, ratio")


def drm_loss(df, cd, y, core, cfg):
    return F.cross_entropy(df.float(), y) + cfg.lam * wrm_loss(cd, y, core, cfg.estimator)


def distill_loss(df, cd, y, core, cfg):
    return F.cross_entropy(df.float(), y) + cfg.lam * soft_cross_entropy(df, core["df_soft"])


LOSSES = {"erm": erm_loss, "drm": drm_loss, "distill": distill_loss, "lpft": erm_loss}


def get_loss(name: str):
    if name not in LOSSES:
        raise ConfigError(f"unknown method loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
