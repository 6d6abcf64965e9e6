"""Fine-tuning (the `finetune` stage): one method, one seed, from the pre-trained model.

The method (drm.finetune.methods) builds the model, runs its init step and computes the
loss of a batch; this module owns the loop every method shares (AdamW, cosine schedule
with warmup, gradient clipping, mixed precision, seeding, gradient accumulation,
torch.distributed). After training, the run predicts df and cd logits on every evaluation
split for each WiSE-FT alpha, so the evaluate stage never runs a model and beta never
reruns training.

On many processes (drm.base.distributed) every rank trains on its contiguous share of each
global batch (finetune.batch_size images) of the one shuffled order all ranks draw from the
run's seed, gradients are averaged by DistributedDataParallel, the FLYP term runs over the
global batch (features gathered with their gradients), and rank 0 alone logs, checkpoints
and writes: N ranks train on exactly the batches one process trains on.
"""
from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from drm.base import distributed
from drm.base.clip import save_state
from drm.base.distributed import World
from drm.base.errors import ConfigError, DRMError
from drm.base.torch_utils import autocast, cosine_with_warmup, resolve_device, seed_everything, set_threads
from drm.finetune.methods import Batch, Method, Setup
from drm.finetune.wise import predict
from drm.zeroshot.store import CoreEstimates


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
    """Wraps a dataset so items carry their index (to look up per-sample core estimates), and
    draws each item's random augmentation from its own seed: the key is (index, seed), the seed
    a function of the run's seed, the epoch and the index only (augmentation_seed). So an image
    is augmented alike however many processes or DataLoader workers share the epoch, and in
    whatever order they reach it."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, key):
        i, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x, y = self.ds[i]
        return x, y, i


def augmentation_seed(*, run_seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch (numpy's SeedSequence mixing)."""
    import numpy as np

    hi, lo = np.random.SeedSequence([run_seed, epoch, index]).generate_state(2)
    return (int(hi) << 32 | int(lo)) & (2**63 - 1)


def load_core(zs_dir, meta) -> CoreEstimates:
    """The core estimates aligned to the training split's meta order (by sample id)."""
    return CoreEstimates.open(zs_dir, meta)


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


class GlobalBatches(Sampler):
    """The epoch's global batches, EpochSampler's order cut into batch_size pieces (the last
    one dropped when it is short and n > batch_size), and of each the part this rank trains
    on: a contiguous 1/world_size share, cut into accum_steps equal micro-batches. Yields
    lists of (index, augmentation seed), accum_steps per optimizer step; one rank, no
    accumulation: the batches DataLoader(batch_size, drop_last) makes from the same sampler."""

    def __init__(self, order: EpochSampler, *, batch_size: int, world: World, accum_steps: int = 1,
                 run_seed: int = 0):
        self.order, self.world, self.accum, self.run_seed = order, world, accum_steps, run_seed
        self.epoch = 0  # train() sets it before each epoch: it seeds the epoch's augmentations
        n = len(order)
        self.batch_size = min(batch_size, n)
        self.drop_last = n > batch_size
        self.steps = n // batch_size if self.drop_last else 1
        parts = world.world_size * accum_steps
        if self.batch_size % parts:
            what = "finetune.batch_size" if self.drop_last else f"the training split's {n} images (one batch)"
            raise ConfigError(f"{what} ({self.batch_size}) must divide evenly among {world.world_size} process(es) x "
                              f"{accum_steps} accumulation step(s): every micro-batch has the same size, so that "
                              "averaging over ranks and micro-batches is the mean over the global batch")
        self.micro = self.batch_size // parts

    def __len__(self) -> int:
        return self.steps * self.accum

    def __iter__(self):
        batch = []
        for i in self.order:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield from self._parts(batch)
                batch = []
        if batch and not self.drop_last:
            yield from self._parts(batch)

    def _parts(self, batch: list[int]):
        local = [(i, augmentation_seed(run_seed=self.run_seed, epoch=self.epoch, index=i))
                 for i in batch[self.world.shard(len(batch))]]
        for m in range(self.accum):
            yield local[m * self.micro:(m + 1) * self.micro]


class TrainStep(nn.Module):
    """The model and its method's loss as one module, so DistributedDataParallel sees the
    whole step (features, heads, text tower) in its forward."""

    def __init__(self, model: nn.Module, method: Method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.method.batch_loss(self.model, batch)


def wrap_for_world(model: nn.Module, method: Method, *, world: World, device: torch.device) -> nn.Module:
    """TrainStep, inside DistributedDataParallel when there are several ranks. BatchNorm
    statistics are synchronised across ranks on CUDA (SyncBatchNorm); on CPU they stay per
    rank (gloo has no SyncBatchNorm): say so, since it breaks the one-process equivalence."""
    step = TrainStep(model, method)
    if not world.distributed:
        return step
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and device.type == "cuda":
        step = nn.SyncBatchNorm.convert_sync_batchnorm(step)
    elif has_bn and world.is_main:
        print("finetune: the model has BatchNorm layers and runs on CPU ranks: their batch statistics are per rank "
              "(SyncBatchNorm needs CUDA), so training is not identical to one process")
    from torch.nn.parallel import DistributedDataParallel

    # find_unused_parameters only where the method leaves a head out of its loss (ERM's cd
    # head): the search costs an extra pass over the autograd graph each step.
    # No buffer sync each forward: every rank holds the same buffers (prompt tokens), and
    # re-sending them each step would cost more than the step on a large template set.
    return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=method.leaves_parameters_unused,
                                   forward_sync_buffers=False)


def train(model: nn.Module, *, method: Method, train_split, core, cfg, lr: float, seed: int, runtime,
          progress=True, live=None, checkpoints=None, resume: dict | None = None, world: World = World(),
          device: torch.device | None = None) -> list[dict]:
    """The training loop. checkpoints: a drm.finetune.checkpoint.Checkpoints to save to when
    due (rank 0); resume: a checkpoint's state to continue from (the same run, checked by its
    caller); world/device: this rank (drm.base.distributed.init)."""
    from drm.finetune.checkpoint import rng_states, set_rng_states

    device = device or resolve_device(runtime.device)
    gen = seed_everything(seed)
    text_generator = torch.Generator().manual_seed(seed + 1)  # FLYP's template choice
    sampler = EpochSampler(len(train_split.dataset), gen)
    batches = GlobalBatches(sampler, batch_size=cfg.batch_size, world=world, accum_steps=cfg.accum_steps,
                            run_seed=seed)
    loader = DataLoader(Indexed(train_split.dataset), batch_sampler=batches, generator=gen,
                        num_workers=runtime.num_workers, persistent_workers=runtime.num_workers > 0,
                        pin_memory=device.type == "cuda")
    per_epoch, accum = batches.steps, cfg.accum_steps
    total = cfg.epochs * per_epoch
    opt = torch.optim.AdamW(param_groups(model, cfg.wd), lr=lr)
    sched = cosine_with_warmup(opt, cfg.warmup_steps, total)
    model.to(device).train()
    if runtime.grad_checkpointing:
        model.set_grad_checkpointing(True)
    step_module = wrap_for_world(model, method, world=world, device=device)
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
    bar = tqdm(total=total, initial=step, desc=f"finetune: {method.loss} seed {seed}",
               disable=not (progress and world.is_main))
    for epoch in range(first_epoch, cfg.epochs):
        if resume is not None and epoch == first_epoch:
            gen.set_state(resume["rng"]["loader"])  # as the epoch in progress started
            batch = resume["position"]["batch"]
        else:
            batch = 0
        epoch_start = gen.get_state()
        batches.epoch = epoch
        micro_batches = iter(loader)
        for _ in range(batch, per_epoch):
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for m in range(accum):
                x, y, idx = next(micro_batches)
                batch_data = Batch(images=x.to(device, non_blocking=True), y=y.to(device, non_blocking=True),
                                   core={k: v.to(device, non_blocking=True) for k, v in core.rows(idx).items()},
                                   text_generator=text_generator, world=world,
                                   global_size=len(y) * world.world_size,
                                   part=slice(world.rank * len(y), (world.rank + 1) * len(y)))
                # DDP averages gradients over ranks once per optimizer step: not on earlier micro-batches.
                sync = m == accum - 1 or not world.distributed
                with step_module.no_sync() if not sync else contextlib.nullcontext():
                    with autocast(device, cfg.precision):
                        loss = step_module(batch_data)
                        if accum > 1:  # the step's gradient: the mean over its micro-batches
                            loss = loss / accum
                    scaler.scale(loss).backward()
                step_loss += loss.item()
            step_loss = distributed.mean_over_ranks(step_loss, world)
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            model.after_step()
            step, batch = step + 1, batch + 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{step_loss:.3f}")
            if live is not None:
                live.log_metric("train/loss", step_loss)
                live.log_metric("train/lr", sched.get_last_lr()[0])
                live.next_step()
            if batch == per_epoch:
                history.append({"epoch": epoch, "loss": step_loss})
            if checkpoints is not None and world.is_main and checkpoints.due(step, total):
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
        for _ in micro_batches:  # run the sampler to its end, as a finished epoch does
            pass
    bar.close()
    if runtime.grad_checkpointing:
        model.set_grad_checkpointing(False)
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


def run_finetune(*, name: str, method: Method, seed: int, setup: Setup, train_transform, cfg, wise, zeroshot_dir: Path,
                 paths: RunPaths, checkpoints=None) -> dict | None:
    """Train one (method, seed) run and write its model, predictions and run.json (each
    atomically). checkpoints: a drm.finetune.checkpoint.Checkpoints (None: no checkpoints):
    a valid checkpoint there is resumed, one is saved when due, and the folder is removed
    once the run's outputs are written. wise: WiseConfig (alphas, prediction batch size).

    Under torch.distributed (drm.base.distributed) every rank trains and predicts its share;
    rank 0 alone writes. Returns run.json's content (None on the other ranks)."""
    from contextlib import nullcontext

    from drm.base.atomic import write_text
    from drm.base.tracking import live_logger

    world, device = distributed.init(resolve_device(setup.runtime.device))
    if world.is_main:
        paths.out.mkdir(parents=True, exist_ok=True)
    set_threads(setup.runtime.threads)
    model = method.build_model(setup)
    zeroshot_state = copy.deepcopy(model.state_dict())
    train_split = setup.source.load(setup.train_split, train_transform)
    core = load_core(zeroshot_dir, train_split.meta)
    resume = None
    if checkpoints is not None:
        checkpoints.identity.add_input("training split (ids, labels)", lambda: split_digest(train_split.meta))
        # Rank 0 decides (the resume rules) and every rank resumes from its checkpoint: all ranks
        # hold the same state, and a decision each rank took alone could differ.
        resume = checkpoints.load(model) if world.is_main else None
        if distributed.from_main(resume is not None, world) and not world.is_main:
            resume = checkpoints.read()
    t0 = time.time()
    if resume is None:
        method.prepare(model, setup)  # LP-FT's probe (the same on every rank); a resumed run has it
    else:
        checkpoints.seconds_before = resume.get("train_seconds", 0.0)
    lr = method.learning_rate(cfg.lr)
    logger = (live_logger(str(paths.live), resume=resume["live"] if resume is not None else None)
              if world.is_main else nullcontext())
    with logger as live:
        if live is not None:
            live.log_params({"method": name, "seed": seed, **method.model_dump(),
                             **cfg.model_dump(exclude={"methods"}), "lr": lr, "processes": world.world_size})
        if checkpoints is not None:
            checkpoints.started = t0
        history = train(model, method=method, train_split=train_split, core=core, cfg=cfg, lr=lr, seed=seed,
                        runtime=setup.runtime, progress=setup.progress, live=live,
                        checkpoints=checkpoints if world.is_main else None, resume=resume, world=world,
                        device=device)
    core.close()
    train_seconds = time.time() - t0 + (resume.get("train_seconds", 0.0) if resume is not None else 0.0)
    if world.is_main:
        save_state(model, paths.model)
    predict(model, zeroshot_state=zeroshot_state, source=setup.source, transform=setup.eval_transform,
            alphas=wise.alphas, out_path=paths.predictions, batch_size=wise.batch_size, device=device,
            num_workers=setup.runtime.num_workers, progress=setup.progress,
            models_at_once=setup.runtime.wise_models_at_once, world=world)
    distributed.barrier(world)
    if not world.is_main:
        return None
    info = {"method": name, "seed": seed, "method_cfg": method.model_dump(),
            "train_seconds": round(train_seconds, 1), "final_loss": history[-1]["loss"],
            "alphas": list(wise.alphas)}
    if world.distributed:
        info["processes"] = world.world_size
    if resume is not None:
        info["resumed_from_step"] = resume["position"]["step"]
    write_text(paths.run_info, json.dumps(info, indent=2) + "\n")
    if checkpoints is not None:
        checkpoints.remove()  # the run is complete: nothing to resume
    return info
