"""The two models fine-tuning trains: image tower + linear df/cd heads (DualHeadClassifier),
or the whole CLIP with heads rebuilt from its text tower (TextTowerClassifier). Both map
images to (df_logits, cd_logits) and have `features`, `logit_scale` and `after_step`."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from drm.zeroshot.heads import ClassTexts, ZeroShotHeads


class DualHeadClassifier(nn.Module):
    """Image tower + two linear heads (df: default prompts, cd: concept descriptions).

    logits = logit_scale * normalize(image features) @ head.T; heads start as the zero-shot
    text embeddings and are trained like any linear layer (as in WiSE-FT)."""

    def __init__(self, *, visual: nn.Module, heads: ZeroShotHeads):
        super().__init__()
        self.visual = visual
        # Parameter names df / cd are the checkpoint's keys (model.safetensors).
        self.df = nn.Parameter(heads.df_head.detach().clone().float())
        self.cd = nn.Parameter(heads.cd_head.detach().clone().float())
        self.register_buffer("logit_scale", torch.tensor(float(heads.logit_scale)))

    def features(self, images):
        return F.normalize(self.visual(images), dim=-1)

    def forward(self, images):
        """(df_logits, cd_logits)."""
        f = self.features(images)
        return self.logit_scale * f @ self.df.t(), self.logit_scale * f @ self.cd.t()

    def after_step(self) -> None:
        """Called after each optimizer step (nothing to constrain here)."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """open_clip's activation checkpointing in the image tower (runtime.grad_checkpointing;
        open_clip's ResNet tower has none and ignores it)."""
        self.visual.set_grad_checkpointing(enable)


class TextTowerClassifier(nn.Module):
    """The whole CLIP (image and text towers, learned logit_scale), for the methods that
    train the text tower too (FLYP, and DRM with the FLYP term). Its df and cd heads are
    not parameters: they are rebuilt from the text tower (embed every prompt, L2-normalise,
    average per class, renormalise), exactly as the zeroshot stage builds them, so at
    initialisation its logits equal the zero-shot model's and WiSE-FT interpolates both
    towers and the heads follow.

    texts: per class, the prompts (templates filled with the class name) and the concept
    descriptions. In eval mode the heads are computed once and cached; training
    (train(), load_state_dict()) drops the cache."""

    def __init__(self, *, clip: nn.Module, tokenizer, texts: ClassTexts):
        super().__init__()
        self.clip = clip
        self.n_classes = len(texts.df_texts)
        for name, per_head in (("df", texts.df_texts), ("cd", texts.cd_texts)):
            flat = [t for per_class in per_head for t in per_class]
            owner = torch.tensor([c for c, per_class in enumerate(per_head) for _ in per_class])
            self.register_buffer(f"{name}_tokens", tokenizer(flat), persistent=False)
            self.register_buffer(f"{name}_owner", owner, persistent=False)
        # Prompt tokens per class and template, for FLYP's one-random-template-per-image text.
        self.register_buffer("template_tokens", self.df_tokens.view(self.n_classes, -1, self.df_tokens.shape[-1]),
                             persistent=False)
        self._heads = None

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)

    def features(self, images):
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)

    # Texts per text-tower call when a head is built. With gradients and more texts than this
    # (e.g. thousands of concept descriptions), each chunk is gradient-checkpointed: memory holds
    # one chunk's activations at a time, at the cost of a second forward pass in backward.
    text_chunk = 256

    def _head(self, name: str) -> torch.Tensor:
        tokens = getattr(self, f"{name}_tokens")
        chunks = [tokens[s:s + self.text_chunk] for s in range(0, len(tokens), self.text_chunk)]
        if torch.is_grad_enabled() and len(chunks) > 1:
            from torch.utils.checkpoint import checkpoint

            emb = torch.cat([checkpoint(self.encode_text, c, use_reentrant=False) for c in chunks])
        else:
            emb = torch.cat([self.encode_text(c) for c in chunks])
        owner = getattr(self, f"{name}_owner")
        head = torch.zeros(self.n_classes, emb.shape[1], device=emb.device, dtype=emb.dtype).index_add(0, owner, emb)
        return F.normalize(head, dim=-1)

    def heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: rebuilt with gradients. Eval: built once and cached until train(),
        load_state_dict() or to()/half()."""
        if self.training:
            return self._head("df"), self._head("cd")
        if self._heads is None:
            with torch.no_grad():
                self._heads = (self._head("df"), self._head("cd"))
        return self._heads

    def cd_logits(self, f: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * f @ self._head("cd").t()

    def forward(self, images):
        """(df_logits, cd_logits)."""
        f = self.features(images)
        df_head, cd_head = self.heads()
        scale = self.logit_scale
        return scale * f @ df_head.t(), scale * f @ cd_head.t()

    def after_step(self) -> None:
        """As CLIP: the learned temperature stays at most 100."""
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, math.log(100))

    def prompt_features(self, y: torch.Tensor, generator: torch.Generator | None = None, *,
                        drawn: int | None = None, part: slice = slice(None)) -> torch.Tensor:
        """FLYP's text side: one random template of its class per image, embedded. drawn: how
        many choices to draw (the global batch's size; default len(y)), of which `part` are
        this rank's images."""
        t = torch.randint(self.template_tokens.shape[1], (drawn or len(y),), generator=generator)[part].to(y.device)
        return self.encode_text(self.template_tokens[y, t])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """open_clip's activation checkpointing in both towers (runtime.grad_checkpointing)."""
        self.clip.set_grad_checkpointing(enable)

    def train(self, mode: bool = True):
        self._heads = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # to(), cuda(), half(): cached heads would be stale
        self._heads = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):  # also when loaded as part of a parent
        self._heads = None
        return super()._load_from_state_dict(*args, **kwargs)
