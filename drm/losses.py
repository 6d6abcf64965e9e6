"""Training objectives, selected by name (LOSSES). Each takes the model's df and cd logits,
the labels, the batch's core estimates (columns of core.parquet) and the method config.

- erm: cross-entropy on the df head.
- drm: L_ERM(df) + lam * L_WRM(cd), where L_WRM is the estimator's core-weighted risk:
  weighted/ratio: mean_i w_i * CE(cd_i, y_i); soft: mean_i CE(cd_i, p_c(.|x_i)), the
  targets optionally sharpened: softmax(pre-trained cd logits / temperature).
- distill (control): CE(df, y) + lam * CE(df, p_df_pretrained): the pre-trained df
  predictions (with the same optional temperature) distilled into the df head, no cd head.
- lpft (LP-FT baseline): the ERM loss, from a df head initialised by a linear probe on
  frozen features (drm.finetune.linear_probe_head) and usually a smaller lr (lr_scale).
- flyp (FLYP baseline): the CLIP contrastive loss between the batch's images and one
  random prompt template of each image's class (flyp_contrastive); the text tower trains
  too and the heads are rebuilt from it (drm.models.TextTowerClassifier). DRM with
  `erm_term: flyp` uses it as its ERM term: flyp_contrastive + lam * L_WRM(cd), the cd
  logits coming from the trained text tower.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from drm.errors import ConfigError


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits.float(), -1)).sum(-1).mean()


def erm_loss(df, cd, y, core, cfg):
    return F.cross_entropy(df.float(), y)


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) from p = softmax(logits): p^(1/T), renormalised (T=1: p itself)."""
    if temperature == 1.0:
        return p
    logp = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)) / temperature
    return torch.softmax(logp, -1)


def wrm_loss(cd, y, core, estimator: str, temperature: float = 1.0):
    if estimator == "soft":
        return soft_cross_entropy(cd, sharpen(core["soft"], temperature))
    if estimator in ("weighted", "ratio"):
        w = core[estimator]
        return (w * F.cross_entropy(cd.float(), y, reduction="none")).mean()
    raise ConfigError(f"unknown estimator {estimator!r}; choose one of weighted, soft, ratio")


def drm_loss(df, cd, y, core, cfg):
    return F.cross_entropy(df.float(), y) + cfg.lam * wrm_loss(cd, y, core, cfg.estimator, cfg.temperature)


def distill_loss(df, cd, y, core, cfg):
    return F.cross_entropy(df.float(), y) + cfg.lam * soft_cross_entropy(df, sharpen(core["df_soft"], cfg.temperature))


def flyp_contrastive(image: torch.Tensor, text: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss between unit image and text embeddings of one batch (text i is a
    prompt of image i's class). Classes repeat within a batch, so every same-class pair is a
    positive: the target of a row is uniform over the entries of its class (the plain
    diagonal target would push an image away from identical prompts of its own class)."""
    logits = scale * image @ text.t()
    same = (y[:, None] == y[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (soft_cross_entropy(logits, target) + soft_cross_entropy(logits.t(), target))


def text_tower_loss(model, images, y, core, cfg, generator=None):
    """flyp, or drm with erm_term flyp, on a drm.models.TextTowerClassifier: the contrastive
    term from the image embeddings and one prompt per image, plus lam * L_WRM(cd) for drm."""
    f = model.features(images)
    loss = flyp_contrastive(f, model.prompt_features(y, generator), y, model.logit_scale)
    if cfg.loss == "drm":
        loss = loss + cfg.lam * wrm_loss(model.cd_logits(f), y, core, cfg.estimator, cfg.temperature)
    return loss


# Losses of the DualHeadClassifier methods, from its (df, cd) logits.
LOSSES = {"erm": erm_loss, "drm": drm_loss, "distill": distill_loss, "lpft": erm_loss}


def get_loss(cfg):
    """step(model, images, y, core, generator) -> loss, for a MethodConfig."""
    if cfg.trains_text_tower:
        return lambda model, x, y, core, gen: text_tower_loss(model, x, y, core, cfg, gen)
    if cfg.loss not in LOSSES:
        raise ConfigError(f"unknown method loss {cfg.loss!r}; choose one of {sorted(LOSSES) + ['flyp']}")
    fn = LOSSES[cfg.loss]

    def step(model, x, y, core, gen):
        df, cd = model(x)
        return fn(df.float(), cd.float(), y, core, cfg)

    return step
