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


def check_model_folder(path, stage: str = "pretrain") -> Path:
    p = Path(path)
    if not (p / CONFIG_FILE).exists():
        raise MissingArtifactError(p / CONFIG_FILE, stage)
    weights = [f for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                           "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth") if (p / f).exists()]
    if not weights:
        raise DRMError(
            f"model folder {p} has a config but no weights ({WEIGHTS_FILE}); refusing to fall back "
            f"to random weights: rerun the '{stage}' stage or copy the weights there")
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
        check_model_folder(folder)
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
