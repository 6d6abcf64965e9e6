"""Fine-tuning (the `finetune` stage): one method, one seed, from the pre-trained model.

The method (drm.finetune.methods) builds the model, runs its init step and computes the
loss of a batch; this module owns the loop every method shares (AdamW, cosine schedule
with warmup, gradient clipping, mixed precision, seeding). After training, the run
predicts df and cd logits on every evaluation split for each WiSE-FT alpha, so the
evaluate stage never runs a model and beta never reruns training.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from drm.base.clip import save_state
from drm.base.errors import DRMError
from drm.base.tables import column_to_tensor, read_table
from drm.base.torch_utils import autocast, cosine_with_warmup, resolve_device, seed_everything, set_threads
from drm.finetune.methods import Batch, Method, Setup
from drm.finetune.wise import predict


@dataclass(frozen=True)
class RunPaths:
    """Where one (method, seed) run writes, inside its run folder."""

    out: Path

    @property
    def model(self) -> Path:
        return self.out / "model.safetensors"

    @property
    def predictions(self) -> Path:
        return self.out / "predictions.parquet"

    @property
    def run_info(self) -> Path:
        return self.out / "run.json"

    @property
    def live(self) -> Path:
        return self.out / "live"


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
    table = read_table(Path(zs_dir) / "core.parquet", "zeroshot")
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


class EpochSampler(Sampler):
    """The shuffled order of each epoch, drawn exactly as DataLoader(shuffle=True,
    generator=g) draws it (RandomSampler: one randperm from `g` when the epoch starts, and a
    second, unused, when it ends), so training is the same as with it; it also keeps the
    epoch's order, and can start an epoch part-way (a resumed run)."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.order: torch.Tensor | None = None
        self._resume: tuple[torch.Tensor, int] | None = None

    def resume_at(self, order: torch.Tensor, skip: int) -> None:
        """The next epoch uses `order` (a checkpoint's) from its `skip`-th index on."""
        self._resume = (order, skip)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        self.order = torch.randperm(self.n, generator=self.generator)
        skip = 0
        if self._resume is not None:
            (self.order, skip), self._resume = self._resume, None
        yield from self.order.tolist()[skip:]
        torch.randperm(self.n, generator=self.generator)  # RandomSampler's draw at the end of an epoch


def train(model: nn.Module, *, method: Method, train_split, core, cfg, lr: float, seed: int, runtime,
          progress=True, live=None, checkpoints=None, resume: dict | None = None) -> list[dict]:
    """The training loop. checkpoints: a drm.finetune.checkpoint.Checkpoints to save to when
    due; resume: a checkpoint's state to continue from (the same run, checked by its caller)."""
    from drm.finetune.checkpoint import rng_states, set_rng_states

    device = resolve_device(runtime.device)
    gen = seed_everything(seed)
    text_generator = torch.Generator().manual_seed(seed + 1)  # FLYP's template choice
    n = len(train_split.dataset)
    sampler = EpochSampler(n, gen)
    loader = DataLoader(Indexed(train_split.dataset), batch_size=cfg.batch_size, sampler=sampler,
                        drop_last=n > cfg.batch_size, generator=gen,
                        num_workers=runtime.num_workers, persistent_workers=runtime.num_workers > 0)
    per_epoch = len(loader)
    total = cfg.epochs * per_epoch
    opt = torch.optim.AdamW(param_groups(model, cfg.wd), lr=lr)
    sched = cosine_with_warmup(opt, cfg.warmup_steps, total)
    model.to(device).train()
    # fp16 needs loss scaling against gradient underflow; bf16 and fp32 don't.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    history, step, first_epoch = [], 0, 0
    if resume is not None:
        pos = resume["position"]
        if (pos["total"], pos["per_epoch"]) != (total, per_epoch):
            raise DRMError(f"checkpoint position {pos} does not fit this run ({total} steps, {per_epoch} per epoch): "
                           "delete the checkpoint folder and rerun")
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        set_rng_states(resume["rng"])
        text_generator.set_state(resume["rng"]["text"])
        history, step, first_epoch = list(resume["history"]), pos["step"], pos["epoch"]
        sampler.resume_at(resume["order"], pos["batch"] * cfg.batch_size)
    bar = tqdm(total=total, initial=step, desc=f"finetune: {method.loss} seed {seed}", disable=not progress)
    for epoch in range(first_epoch, cfg.epochs):
        if resume is not None and epoch == first_epoch:
            gen.set_state(resume["rng"]["loader"])  # as the epoch in progress started
            batch = resume["position"]["batch"]
        else:
            batch = 0
        epoch_start = gen.get_state()
        for x, y, idx in loader:
            batch_data = Batch(images=x.to(device), y=y.to(device),
                               core={k: v[idx].to(device) for k, v in core.items()},
                               text_generator=text_generator)
            with autocast(device, cfg.precision):
                loss = method.batch_loss(model, batch_data)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            model.after_step()
            step, batch = step + 1, batch + 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
            if live is not None:
                live.log_metric("train/loss", loss.item())
                live.log_metric("train/lr", sched.get_last_lr()[0])
                live.next_step()
            if batch == per_epoch:
                history.append({"epoch": epoch, "loss": loss.item()})
            if checkpoints is not None and checkpoints.due(step, total):
                from drm.base.tracking import snapshot

                rng = rng_states(cuda=device.type == "cuda")
                rng.update(loader=epoch_start, text=text_generator.get_state())
                checkpoints.save({
                    "position": {"step": step, "total": total, "epoch": epoch, "batch": batch,
                                 "per_epoch": per_epoch},
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(), "rng": rng, "order": sampler.order.clone(),
                    "history": list(history),
                    "live": snapshot(live.dir) if live is not None and hasattr(live, "dir") else {},
                })
    bar.close()
    model.eval().cpu()
    return history


def linear_probe_head(model, split, *, n_classes: int, c: float = 1.0, batch_size=512, num_workers=0,
                      progress=True) -> torch.Tensor:
    """LP-FT's first step: multinomial logistic regression on the frozen, normalised image
    features; returns df-head weights W with logit_scale * f @ W.T equal to the probe's
    logits (without its intercept)."""
    from sklearn.linear_model import LogisticRegression

    from drm.base.clip import encode_split

    model.eval()
    feats = encode_split(model.visual, split, batch_size=batch_size, num_workers=num_workers, progress=progress,
                         desc="lpft: linear probe features").numpy()
    y = split.meta["y"].to_numpy()
    probe = LogisticRegression(C=c, max_iter=2000).fit(feats, y)
    coef = torch.zeros(n_classes, feats.shape[1])
    coef[torch.as_tensor(probe.classes_)] = torch.as_tensor(probe.coef_, dtype=torch.float32)
    return coef / model.logit_scale


def split_digest(meta) -> str:
    """sha256 of a split's sample ids and labels, in order."""
    import hashlib

    h = hashlib.sha256("\n".join(meta["id"].astype(str)).encode())
    h.update(meta["y"].to_numpy().astype("int64").tobytes())
    return h.hexdigest()


def run_finetune(*, name: str, method: Method, seed: int, setup: Setup, train_transform, cfg, wise_alphas,
                 zeroshot_dir: Path, paths: RunPaths, checkpoints=None) -> dict:
    """Train one (method, seed) run and write its model, predictions and run.json (each
    atomically). checkpoints: a drm.finetune.checkpoint.Checkpoints (None: no checkpoints):
    a valid checkpoint there is resumed, one is saved when due, and the folder is removed
    once the run's outputs are written."""
    from drm.base.atomic import write_text
    from drm.base.tables import write_table
    from drm.base.tracking import live_logger

    paths.out.mkdir(parents=True, exist_ok=True)
    set_threads(setup.runtime.threads)
    model = method.build_model(setup)
    zeroshot_state = copy.deepcopy(model.state_dict())
    train_split = setup.source.load(setup.train_split, train_transform)
    core = load_core(zeroshot_dir, train_split.meta)
    resume = None
    if checkpoints is not None:
        checkpoints.identity.add_input("training split (ids, labels)", lambda: split_digest(train_split.meta))
        resume = checkpoints.load(model)
    t0 = time.time()
    if resume is None:
        method.prepare(model, setup)  # LP-FT's probe; a resumed run has its result in the checkpoint
    else:
        checkpoints.seconds_before = resume.get("train_seconds", 0.0)
    lr = method.learning_rate(cfg.lr)
    with live_logger(str(paths.live), resume=resume["live"] if resume is not None else None) as live:
        live.log_params({"method": name, "seed": seed, **method.model_dump(),
                         **cfg.model_dump(exclude={"methods"}), "lr": lr})
        if checkpoints is not None:
            checkpoints.started = t0
        history = train(model, method=method, train_split=train_split, core=core, cfg=cfg, lr=lr, seed=seed,
                        runtime=setup.runtime, progress=setup.progress, live=live, checkpoints=checkpoints,
                        resume=resume)
    train_seconds = time.time() - t0 + (resume.get("train_seconds", 0.0) if resume is not None else 0.0)
    save_state(model, paths.model)
    preds = predict(model, zeroshot_state=zeroshot_state, source=setup.source, transform=setup.eval_transform,
                    alphas=wise_alphas,
                    device=setup.runtime.device, num_workers=setup.runtime.num_workers, progress=setup.progress)
    write_table(preds, paths.predictions)
    info = {"method": name, "seed": seed, "method_cfg": method.model_dump(),
            "train_seconds": round(train_seconds, 1), "final_loss": history[-1]["loss"],
            "alphas": list(wise_alphas)}
    if resume is not None:
        info["resumed_from_step"] = resume["position"]["step"]
    write_text(paths.run_info, json.dumps(info, indent=2) + "\n")
    if checkpoints is not None:
        checkpoints.remove()  # the run is complete: nothing to resume
    return info
