"""WiSE-FT: weight-space interpolation between the zero-shot and the fine-tuned model, and
the df/cd logits of each interpolated model on every evaluation split."""
from __future__ import annotations

import copy

import torch

from drm.base.tables import logits_table


def wise_state(zeroshot: dict, finetuned: dict, alpha: float) -> dict:
    """theta = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned (floating tensors only)."""
    out = {}
    for k, v in finetuned.items():
        z = zeroshot[k]
        out[k] = (1 - alpha) * z + alpha * v if v.is_floating_point() else v
    return out


def predict(model, *, zeroshot_state: dict, source, transform, alphas, out_path, batch_size=512, device="cpu",
            num_workers=0, progress=True, models_at_once: int = 0, world=None) -> None:
    """df/cd logits of the WiSE-FT(alpha) models on every non-training split, streamed into
    the Parquet file out_path (rank 0) as split x alpha tables.

    alpha 0 is the zero-shot model, whose logits the zeroshot stage already has: skipped
    here (evaluate takes them from there). Each image is decoded once per pass and fed to
    every model held (models_at_once alphas per pass; 0: all). Under torch.distributed each
    rank predicts its share of the batches (drm.base.distributed.map_batches) and rank 0
    writes, so the file is the one a single process writes."""
    from contextlib import nullcontext

    from drm.base.atomic import atomic_file
    from drm.base.distributed import World, map_batches
    from drm.zeroshot.store import ParquetStream

    world = world or World()
    finetuned = copy.deepcopy(model.state_dict())
    alphas = [float(a) for a in alphas if a > 0]
    at_once = models_at_once or len(alphas)
    n_classes = len(source.classnames)
    with atomic_file(out_path) if world.is_main else nullcontext() as tmp:
        # a row: split and id strings (~64 B), y, alpha, two C-wide float32 logit vectors
        stream = ParquetStream(tmp, row_bytes=72 + 8 * n_classes) if world.is_main else None
        for first in range(0, len(alphas), at_once):
            group = alphas[first:first + at_once]
            models = [_wise_model(model, zeroshot_state, finetuned, alpha).to(device) for alpha in group]

            def logits(x):  # every held model's df and cd logits side by side
                return torch.cat([torch.cat([df.float(), cd.float()], 1) for df, cd in (m(x) for m in models)], 1)

            for name, role in source.splits.items():
                if role == "train":
                    continue
                split = source.load(name, transform)
                outs = [([], []) for _ in models]
                with torch.no_grad():
                    for rows in map_batches(logits, split.dataset, batch_size=batch_size,
                                            width=2 * n_classes * len(models), world=world, device=device,
                                            num_workers=num_workers, progress=progress,
                                            desc=f"predict: {name} x {len(models)} alphas"):
                        if not world.is_main:
                            continue
                        rows = rows.cpu()
                        for k, (dfs, cds) in enumerate(outs):
                            dfs.append(rows[:, 2 * n_classes * k: 2 * n_classes * k + n_classes])
                            cds.append(rows[:, 2 * n_classes * k + n_classes: 2 * n_classes * (k + 1)])
                if world.is_main:
                    for alpha, (dfs, cds) in zip(group, outs):
                        stream.append(logits_table(name, split.meta, torch.cat(dfs), torch.cat(cds), alpha=alpha))
            del models
        if world.is_main:
            stream.close()


def _wise_model(model, zeroshot_state: dict, finetuned: dict, alpha: float):
    m = copy.deepcopy(model)
    m.load_state_dict(wise_state(zeroshot_state, finetuned, alpha))
    return m.eval()
