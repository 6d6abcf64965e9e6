"""open_clip models: build the embedded architecture, save/load local model folders, and the
dual-head classifier that every fine-tuning method trains.

A local model folder is what `open_clip.create_model("local-dir:PATH")` loads:
`open_clip_config.json` ({"model_cfg": ..., "preprocess_cfg": ...}) beside
`open_clip_model.safetensors`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from drm.errors import DRMError, MissingArtifactError

WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
LOCAL = "local-dir:"


def build_clip(arch: dict):
    """A randomly initialised open_clip CLIP from an architecture dict (model_cfg)."""
    import open_clip

    return open_clip.CLIP(**arch)


def save_model_folder(model, arch: dict, out_dir, image_size: int) -> Path:
    from safetensors.torch import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preprocess = {"size": image_size, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    (out / CONFIG_FILE).write_text(json.dumps({"model_cfg": arch, "preprocess_cfg": preprocess}, indent=2))
    save_model(model, str(out / WEIGHTS_FILE))
    return out


def check_model_folder(path, stage: str | None = "pretrain") -> Path:
    """The folder, if it holds an open_clip config and weights. `stage` names the stage that
    writes it (None for a user's own folder: the message then says what the folder needs)."""
    p = Path(path)
    if not (p / CONFIG_FILE).exists():
        if stage:
            raise MissingArtifactError(p / CONFIG_FILE, stage)
        raise DRMError(f"model folder {p} has no {CONFIG_FILE}: a local-dir: model folder needs "
                       f"{CONFIG_FILE} (open_clip's model_cfg and preprocess_cfg) and its weights "
                       f"({WEIGHTS_FILE} or open_clip_pytorch_model.bin); see the README, 'Real models and real data'")
    weights = [f for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                           "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth") if (p / f).exists()]
    if not weights:
        fix = f"rerun the '{stage}' stage or copy the weights there" if stage else "copy the weights there"
        raise DRMError(
            f"model folder {p} has a config but no weights ({WEIGHTS_FILE}); refusing to fall back "
            f"to random weights: {fix}")
    return p


def load_pretrained(name: str, pretrained: str | None = None, device: str = "cpu", base_dir="."):
    """(model, train_transform, eval_transform, tokenizer) for any open_clip model name.

    'local-dir:PATH' is resolved against base_dir and must contain weights; hub names
    (e.g. ViT-B-16 with pretrained='openai') download on first use, as open_clip does."""
    import open_clip

    if name.startswith(LOCAL):
        folder = Path(name[len(LOCAL):])
        if not folder.is_absolute():
            folder = Path(base_dir) / folder
        # models/pretrained is the pretrain stage's output; any other folder is the user's own.
        own = folder.resolve() != (Path(base_dir) / "models" / "pretrained").resolve()
        check_model_folder(folder, None if own else "pretrain")
        name = LOCAL + str(folder)
        pretrained = None
    try:
        model, pre_train, pre_val = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, require_pretrained=True)
    except RuntimeError as e:
        raise DRMError(f"could not load pre-trained weights for model {name!r} "
                       f"(pretrained={pretrained!r}): {e}") from e
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    return model, pre_train, pre_val, tokenizer


class DualHeadClassifier(nn.Module):
    """Image tower + two linear heads (df: default prompts, cd: concept descriptions).

    logits = logit_scale * normalize(image features) @ head.T; heads start as the zero-shot
    text embeddings and are trained like any linear layer (as in WiSE-FT)."""

    def __init__(self, visual: nn.Module, df: torch.Tensor, cd: torch.Tensor, logit_scale: float):
        super().__init__()
        self.visual = visual
        self.df = nn.Parameter(df.detach().clone().float())
        self.cd = nn.Parameter(cd.detach().clone().float())
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))

    def features(self, images):
        return F.normalize(self.visual(images), dim=-1)

    def forward(self, images):
        f = self.features(images)
        return self.logit_scale * f @ self.df.t(), self.logit_scale * f @ self.cd.t()


def save_state(module: nn.Module, path) -> None:
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def load_state(module: nn.Module, path, stage: str = "finetune") -> nn.Module:
    from safetensors.torch import load_file

    p = Path(path)
    if not p.exists():
        raise MissingArtifactError(p, stage)
    module.load_state_dict(load_file(str(p)))
    return module


def wise_state(zeroshot: dict, finetuned: dict, alpha: float) -> dict:
    """WiSE-FT: theta = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned (floats only)."""
    out = {}
    for k, v in finetuned.items():
        z = zeroshot[k]
        out[k] = (1 - alpha) * z + alpha * v if v.is_floating_point() else v
    return out


class TextTowerClassifier(nn.Module):
    """The whole CLIP (image and text towers, learned logit_scale), for the methods that
    train the text tower too (FLYP, and DRM with the FLYP term). Its df and cd heads are
    not parameters: they are rebuilt from the text tower (embed every prompt, L2-normalise,
    average per class, renormalise), exactly as the zeroshot stage builds them, so at
    initialisation its logits equal the zero-shot model's and WiSE-FT interpolates both
    towers and the heads follow.

    df_texts / cd_texts: per class, the prompts (templates filled with the class name) and
    the concept descriptions. In eval mode the heads are computed once and cached; training
    (train(), load_state_dict()) drops the cache."""

    def __init__(self, clip: nn.Module, tokenizer, df_texts: list[list[str]], cd_texts: list[list[str]]):
        super().__init__()
        self.clip = clip
        self.n_classes = len(df_texts)
        for name, texts in (("df", df_texts), ("cd", cd_texts)):
            flat = [t for per_class in texts for t in per_class]
            owner = torch.tensor([c for c, per_class in enumerate(texts) for _ in per_class])
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
        load_state_dict(), to()/half() or invalidate() (call it after changing parameters in
        place in eval mode)."""
        if self.training:
            return self._head("df"), self._head("cd")
        if self._heads is None:
            with torch.no_grad():
                self._heads = (self._head("df"), self._head("cd"))
        return self._heads

    def invalidate(self) -> None:
        self._heads = None

    def cd_logits(self, f: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * f @ self._head("cd").t()

    def forward(self, images):
        f = self.features(images)
        df, cd = self.heads()
        scale = self.logit_scale
        return scale * f @ df.t(), scale * f @ cd.t()

    def prompt_features(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """FLYP's text side: one random template of its class per image, embedded."""
        t = torch.randint(self.template_tokens.shape[1], (len(y),), generator=generator).to(y.device)
        return self.encode_text(self.template_tokens[y, t])

    def train(self, mode: bool = True):
        self._heads = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # to(), cuda(), half(): cached heads would be stale
        self._heads = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):  # also when loaded as part of a parent
        self._heads = None
        return super()._load_from_state_dict(*args, **kwargs)
