"""Pre-train a small CLIP on the embedded world's image-caption corpus (the `pretrain` stage).

Stands in for a real pre-trained CLIP on machines without one: a contrastive (InfoNCE)
image-text objective, AdamW with cosine schedule, saved as a local open_clip model folder.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
from tqdm import tqdm

from drm.base.atomic import write_text
from drm.base.clip import build_clip, save_model_folder
from drm.base.torch_utils import cosine_with_warmup, resolve_device, seed_everything, set_threads

MEAN, STD = 0.5, 0.25  # the preprocess written into the model folder (see save_model_folder)


def images_to_tensor(dataset) -> torch.Tensor:
    """Decode a world split once into a normalised float tensor (N, 3, H, W)."""
    arr = np.stack([np.frombuffer(b, np.uint8) for b in dataset.images])
    s = dataset.size
    x = torch.from_numpy(arr.reshape(-1, s, s, 3)).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


def pretrain(cfg, split, out_dir, image_size: int, *, runtime, progress: bool = True, live=None,
             run_info=None) -> dict:
    """Train a CLIP from cfg.arch on `split` (a Split whose meta has a `caption` column);
    runtime: device and threads; run_info: a JSON file for the summary with the training time."""
    import open_clip

    set_threads(runtime.threads)
    gen = seed_everything(cfg.seed)
    device = resolve_device(runtime.device)
    model = build_clip(cfg.arch).to(device)
    ctx = cfg.arch.get("text_cfg", {}).get("context_length", 77)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
    tokens = tokenizer(split.meta["caption"].tolist())
    images = images_to_tensor(split.dataset)
    n = len(images)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.wd)
    sched = cosine_with_warmup(opt, cfg.warmup, cfg.steps)
    model.train()
    order = torch.randperm(n, generator=gen)
    pos, t0, history = 0, time.time(), []
    bar = tqdm(range(cfg.steps), desc="pretrain: contrastive steps", disable=not progress)
    for step in bar:
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        # Light augmentation: random flips would change arrowheads; shift by up to 2 px.
        x = images[idx].to(device)
        dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        img_f, txt_f, scale = model(x, tokens[idx].to(device))[:3]
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            history.append({"step": step, "loss": loss.item()})
            if live is not None:
                live.log_metric("pretrain/loss", loss.item())
                live.next_step()
    model.eval().cpu()
    summary = {"steps": cfg.steps, "final_loss": history[-1]["loss"],
               "logit_scale": float(model.logit_scale.detach().exp()), "n_pairs": n}
    # The model folder holds no timing, so the same training gives the same bytes (and the
    # same hash in dvc.lock); the time goes to run_info (runs/pretrain/run.json). The folder
    # appears complete or not at all (built beside it, then renamed).
    save_model_folder(model, cfg.arch, out_dir, image_size, extra={"pretrain.json": json.dumps(summary, indent=2)})
    if run_info is not None:
        write_text(run_info, json.dumps({**summary, "seconds": round(time.time() - t0, 1)}, indent=2))
    return {**summary, "seconds": round(time.time() - t0, 1)}
