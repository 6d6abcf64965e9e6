"""Small pieces shared by the training loops: seeding, schedules, threads, precision."""
from __future__ import annotations

import math
import random
from contextlib import nullcontext

import numpy as np
import torch

from drm.base.errors import ConfigError


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def cosine_with_warmup(optimizer, warmup: int, total: int):
    """Linear warmup to the base lr over `warmup` steps, then cosine decay to 0 at `total`."""

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; set device: cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available; set device: cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """Mixed precision context: bf16 works on CPU and GPU, fp16 on GPU only."""
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
