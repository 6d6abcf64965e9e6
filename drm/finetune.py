"""Fine-tuning (the `finetune` stage): one method, one seed, from the pre-trained model.

Every method trains the same DualHeadClassifier (image tower + df and cd heads initialised
from the zero-shot heads); the method only chooses the loss (drm.losses.LOSSES). After
training, the run predicts df and cd logits on every evaluation split for each WiSE-FT
alpha, so the evaluate stage never runs a model and beta never reruns training.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from drm.errors import DRMError, require
from drm.inference import column_to_tensor, logits_table
from drm.losses import get_loss
from drm.models import DualHeadClassifier, TextTowerClassifier, save_state, wise_state
from drm.train_utils import autocast, cosine_with_warmup, resolve_device, seed_everything, set_threads


class Indexed(Dataset):
    """Wraps a dataset so items carry their index (to look up per-sample core estimates)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return x, y, i


def load_core(zs_dir, meta) -> dict[str, torch.Tensor]:
    """core.parquet aligned to the training split's meta order (by sample id)."""
    table = pq.read_table(require(Path(zs_dir) / "core.parquet", "zeroshot"))
    ids = table.column("id").to_pylist()
    pos = {i: k for k, i in enumerate(ids)}
    missing = [i for i in meta["id"].astype(str) if i not in pos]
    if missing:
        raise DRMError(f"core.parquet lacks {len(missing)} training sample(s) (e.g. {missing[:3]}): "
                       "the data changed since the zeroshot stage ran; rerun `dvc repro zeroshot`")
    order = torch.tensor([pos[i] for i in meta["id"].astype(str)])
    out = {}
    for name in ("weighted", "ratio"):
        out[name] = torch.tensor(table.column(name).to_numpy()).float()[order]
    for name in ("soft", "df_soft"):
        out[name] = column_to_tensor(table, name)[order]
    return out


def param_groups(model, wd: float) -> list[dict]:
    """AdamW groups: weight decay on every trainable parameter except the learned
    temperature (TextTowerClassifier's logit_scale). (open_clip's CLIP
    pre-training also exempts gains and biases; WiSE-FT's fine-tuning decays every parameter.)"""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("logit_scale") else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def train(model: nn.Module, train_split, core, method_cfg, cfg, seed, progress=True, live=None,
          num_workers: int = 0):
    device = resolve_device(cfg.device)
    gen = seed_everything(seed)
    loss_fn = get_loss(method_cfg)
    text_gen = torch.Generator().manual_seed(seed + 1)  # FLYP's template choice
    loader = DataLoader(Indexed(train_split.dataset), batch_size=cfg.batch_size, shuffle=True,
                        drop_last=len(train_split.dataset) > cfg.batch_size, generator=gen,
                        num_workers=num_workers, persistent_workers=num_workers > 0)
    total = cfg.epochs * len(loader)
    opt = torch.optim.AdamW(param_groups(model, cfg.wd), lr=cfg.lr)
    sched = cosine_with_warmup(opt, cfg.warmup_steps, total)
    model.to(device).train()
    # fp16 needs loss scaling against gradient underflow; bf16 and fp32 don't.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    history = []
    bar = tqdm(total=total, desc=f"finetune: {method_cfg.loss} seed {seed}", disable=not progress)
    for epoch in range(cfg.epochs):
        for x, y, idx in loader:
            x, y = x.to(device), y.to(device)
            batch_core = {k: v[idx].to(device) for k, v in core.items()}
            with autocast(device, cfg.precision):
                loss = loss_fn(model, x, y, batch_core, text_gen)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            if isinstance(model, TextTowerClassifier):
                with torch.no_grad():  # as CLIP: temperature at most 100
                    model.clip.logit_scale.clamp_(0, math.log(100))
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
            if live is not None:
                live.log_metric("train/loss", loss.item())
                live.log_metric("train/lr", sched.get_last_lr()[0])
                live.next_step()
        history.append({"epoch": epoch, "loss": loss.item()})
    bar.close()
    model.eval().cpu()
    return history


def predict(model, zeroshot_state, source, transform, alphas, batch_size=512, device="cpu",
            num_workers=0, progress=True) -> pa.Table:
    """df/cd logits of the WiSE-FT(alpha) models on every non-training split.

    alpha 0 is the zero-shot model, whose logits the zeroshot stage already has: skipped
    here (evaluate takes them from there). Each image is decoded once and fed to every
    alpha's model."""
    finetuned = copy.deepcopy(model.state_dict())
    alphas = [float(a) for a in alphas if a > 0]
    models = []
    for alpha in alphas:
        m = copy.deepcopy(model)
        m.load_state_dict(wise_state(zeroshot_state, finetuned, alpha))
        models.append(m.to(device).eval())
    tables = []
    for name, role in source.splits.items():
        if role == "train":
            continue
        split = source.load(name, transform)
        loader = DataLoader(split.dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        outs = [([], []) for _ in models]
        with torch.no_grad():
            for x, _ in tqdm(loader, desc=f"predict: {name} x {len(models)} alphas", disable=not progress,
                             leave=False):
                x = x.to(device)
                for m, (dfs, cds) in zip(models, outs):
                    df, cd = m(x)
                    dfs.append(df.float().cpu())
                    cds.append(cd.float().cpu())
        for alpha, (dfs, cds) in zip(alphas, outs):
            tables.append(logits_table(name, split.meta, torch.cat(dfs), torch.cat(cds), alpha=alpha))
    return pa.concat_tables(tables)


def linear_probe_head(model: DualHeadClassifier, split, n_classes: int, c: float = 1.0, batch_size=512,
                      num_workers=0, progress=True) -> torch.Tensor:
    """LP-FT's first step: multinomial logistic regression on the frozen, normalised image
    features; returns df-head weights W with logit_scale * f @ W.T equal to the probe's
    logits (without its intercept)."""
    from sklearn.linear_model import LogisticRegression

    from drm.inference import encode_split

    model.eval()
    feats = encode_split(model.visual, split, batch_size, num_workers=num_workers, progress=progress,
                         desc="lpft: linear probe features").numpy()
    y = split.meta["y"].to_numpy()
    probe = LogisticRegression(C=c, max_iter=2000).fit(feats, y)
    coef = torch.zeros(n_classes, feats.shape[1])
    coef[torch.as_tensor(probe.classes_)] = torch.as_tensor(probe.coef_, dtype=torch.float32)
    return coef / model.logit_scale


def build_model(pretrained_model, heads, method_cfg, texts=None, tokenizer=None) -> nn.Module:
    """The model a method trains: DualHeadClassifier (image tower + linear heads from the
    zero-shot heads), or for FLYP-style methods the whole CLIP (TextTowerClassifier), whose
    heads come from the prompts and descriptions in `texts` = (df_texts, cd_texts)."""
    if method_cfg.trains_text_tower:
        if texts is None or tokenizer is None:
            raise DRMError(f"loss {method_cfg.loss!r} (erm_term {method_cfg.erm_term!r}) trains the text tower: "
                           "it needs the prompt texts and the tokenizer (drm.steps.finetune passes them)")
        return TextTowerClassifier(copy.deepcopy(pretrained_model), tokenizer, *texts)
    df, cd, scale = heads
    return DualHeadClassifier(copy.deepcopy(pretrained_model.visual), df, cd, scale)


def run_finetune(pretrained_model, heads, source, transforms, method_name, method_cfg, cfg, wise_alphas,
                 seed, zs_dir, out_dir, num_workers=0, progress=True, texts=None, tokenizer=None) -> dict:
    """Train one (method, seed) run and write model.safetensors, predictions.parquet, run.json.

    texts = (df_texts, cd_texts) per class and the tokenizer are needed by the methods that
    train the text tower (MethodConfig.trains_text_tower)."""
    from drm.tracking import live_logger

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.threads)
    train_tf, eval_tf = transforms
    model = build_model(pretrained_model, heads, method_cfg, texts, tokenizer)
    zeroshot_state = copy.deepcopy(model.state_dict())
    train_name = next(s for s, r in source.splits.items() if r == "train")
    train_split = source.load(train_name, train_tf)
    core = load_core(zs_dir, train_split.meta)
    t0 = time.time()
    if method_cfg.loss == "lpft":
        with torch.no_grad():
            model.df.copy_(linear_probe_head(model, source.load(train_name, eval_tf), len(source.classnames),
                                             method_cfg.lp_c, num_workers=num_workers, progress=progress))
    if method_cfg.lr_scale != 1.0:
        cfg = cfg.model_copy(update={"lr": cfg.lr * method_cfg.lr_scale})
    with live_logger(str(out / "live")) as live:
        live.log_params({"method": method_name, "seed": seed, **method_cfg.model_dump(),
                         **cfg.model_dump(exclude={"methods"})})
        history = train(model, train_split, core, method_cfg, cfg, seed, progress, live, num_workers)
    train_seconds = time.time() - t0
    save_state(model, out / "model.safetensors")
    preds = predict(model, zeroshot_state, source, eval_tf, wise_alphas, device=cfg.device,
                    num_workers=num_workers, progress=progress)
    pq.write_table(preds, out / "predictions.parquet")
    info = {"method": method_name, "seed": seed, "method_cfg": method_cfg.model_dump(),
            "train_seconds": round(train_seconds, 1), "final_loss": history[-1]["loss"],
            "alphas": list(wise_alphas)}
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
