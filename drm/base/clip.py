"""open_clip models: build the embedded architecture, save/load local model folders, load any
pre-trained model by name, save/load state dicts (safetensors), encode images.

A local model folder is what `open_clip.create_model("local-dir:PATH")` loads:
`open_clip_config.json` ({"model_cfg": ..., "preprocess_cfg": ...}) beside
`open_clip_model.safetensors`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from drm.base.errors import DRMError, MissingArtifactError

WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
LOCAL = "local-dir:"


def build_clip(arch: dict):
    """A randomly initialised open_clip CLIP from an architecture dict (model_cfg)."""
    import open_clip

    return open_clip.CLIP(**arch)


def save_model_folder(model, arch: dict, out_dir, image_size: int, extra: dict[str, str] | None = None) -> Path:
    """Write the local open_clip model folder atomically (built beside it, then renamed into
    place: drm.base.atomic.atomic_dir); `extra`: more text files to put in it, name -> text."""
    from safetensors.torch import save_model

    from drm.base.atomic import atomic_dir

    out = Path(out_dir)
    preprocess = {"size": image_size, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    with atomic_dir(out) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps({"model_cfg": arch, "preprocess_cfg": preprocess}, indent=2))
        save_model(model, str(tmp / WEIGHTS_FILE))
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
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


def load_pretrained(name: str, pretrained: str | None = None, *, device: str = "cpu", base_dir="."):
    """(model, train_transform, eval_transform, tokenizer) for any open_clip model name.

    'local-dir:PATH' is resolved against base_dir and must contain weights; hub names
    (e.g. ViT-B-16 with pretrained='openai') download on first use, as open_clip does."""
    import open_clip

    folder = own = None
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
    except Exception as e:
        if folder is None or type(e).__name__ != "SafetensorError":
            raise
        from drm.base.atomic import shown

        fix = "replace the weights with a good copy" if own else "rerun the stage that makes it: `dvc repro embedded/dvc.yaml:pretrain`"
        raise DRMError(f"the weights in model folder {shown(folder)} are unreadable ({e}): the file is truncated or "
                       f"corrupt; {fix}") from None
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    return model, pre_train, pre_val, tokenizer


def save_state(module: nn.Module, path) -> None:
    """A module's state dict as safetensors, written atomically."""
    from safetensors.torch import save_file

    from drm.base.atomic import atomic_file

    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_file(path) as tmp:
        save_file(state, str(tmp))


@torch.no_grad()
def encode_split(encode_fn, split, *, batch_size=512, device="cpu", num_workers=0, progress=True,
                 desc=None) -> torch.Tensor:
    """L2-normalised image features for every sample of a Split, in meta order."""
    loader = DataLoader(split.dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats = []
    for x, _ in tqdm(loader, desc=desc or f"encode {split.name}", disable=not progress, leave=False):
        feats.append(torch.nn.functional.normalize(encode_fn(x.to(device)).float(), dim=-1).cpu())
    return torch.cat(feats)


FETCHED_FILE = "drm_model.json"  # what fetch_model saved in a folder: {"name", "pretrained", ...}


def _folder(weights: str, base_dir) -> Path:
    folder = Path(weights)
    return folder if folder.is_absolute() else Path(base_dir) / folder


def fetch_hint(cfg) -> str:
    return (f"fetch it once with `python -m pipeline.presets fetch-model` (downloads {cfg.name} with "
            f"pretrained={cfg.pretrained} through open_clip and saves it in {cfg.weights})")


def load_model(cfg, *, device: str = "cpu", base_dir="."):
    """(model, train_transform, eval_transform, tokenizer) from params.yaml's `model` section
    (drm.base.params.ModelConfig): the local model folder `cfg.weights`, which DVC tracks.

    A folder fetched for an open_clip name must hold that name and tag (its drm_model.json),
    so a params change without a new fetch fails here rather than training the wrong model."""
    if not cfg.hub:
        return load_pretrained(cfg.name, None, device=device, base_dir=base_dir)
    folder = _folder(cfg.weights, base_dir)
    if not folder.is_dir():
        raise DRMError(f"model.weights {cfg.weights} does not exist: {fetch_hint(cfg)}")
    info_path = folder / FETCHED_FILE
    if info_path.exists():
        info = json.loads(info_path.read_text())
        got = (info.get("name"), info.get("pretrained"))
        if got != (cfg.name, cfg.pretrained):
            raise DRMError(f"model folder {cfg.weights} holds {got[0]} (pretrained={got[1]}), but params.yaml's "
                           f"model is {cfg.name} (pretrained={cfg.pretrained}): point model.weights at another "
                           f"folder and {fetch_hint(cfg)}")
    check_model_folder(folder, None)
    return load_pretrained(LOCAL + str(folder), None, device=device, base_dir=base_dir)


def fetch_model(name: str, pretrained: str | None, out, *, cache_dir=None) -> Path:
    """Download an open_clip model (`name` with weights `pretrained`: a tag such as openai, or a
    file) through open_clip and save it as a local model folder `out` (config, safetensors
    weights and drm_model.json recording name and tag), written atomically.

    The saved config carries the activation the weights were trained with: OpenAI's CLIP
    weights need QuickGELU, which open_clip's plain ViT-B-16 / ViT-L-14 configs lack (open_clip
    then only warns), so the folder builds the model the weights belong to."""
    import copy

    import open_clip
    from safetensors.torch import save_file

    from drm.base.atomic import atomic_dir
    from drm.base.params import open_clip_name

    better = open_clip_name(name)
    if better:
        raise DRMError(f"model name {name!r} is OpenAI's spelling; open_clip calls it {better!r}")
    if name.startswith(LOCAL):
        raise DRMError(f"{name!r} is a local folder already: nothing to fetch")
    if not name.startswith("hf-hub:") and name not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise DRMError(f"open_clip has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                       "; `python -c 'import open_clip; print(open_clip.list_models())'` lists them"))
    tag_cfg = {}
    if pretrained and not name.startswith("hf-hub:"):
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) or {}
        if not tag_cfg and not Path(pretrained).is_file():
            raise DRMError(f"open_clip has no pretrained tag {pretrained!r} for {name}; its tags: "
                           f"{open_clip.list_pretrained_tags_by_model(name)}")
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, force_quick_gelu=quick_gelu, require_pretrained=True, cache_dir=cache_dir)
    except RuntimeError as e:
        raise DRMError(f"could not fetch {name} (pretrained={pretrained!r}) through open_clip: {e}") from e
    model_cfg = copy.deepcopy(open_clip.get_model_config(name))
    if quick_gelu:
        model_cfg["quick_gelu"] = True
    preprocess = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    out = Path(out)
    with atomic_dir(out) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2))
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / FETCHED_FILE).write_text(json.dumps(
            {"name": name, "pretrained": pretrained, "quick_gelu": quick_gelu,
             "open_clip_version": open_clip.__version__}, indent=2) + "\n")
    return out
