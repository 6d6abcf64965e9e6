"""WiSE-FT: weight-space interpolation between the zero-shot and the fine-tuned model, and
the df/cd logits of each interpolated model on every evaluation split."""
from __future__ import annotations

import copy

import pyarrow as pa
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from drm.base.tables import logits_table


def wise_state(zeroshot: dict, finetuned: dict, alpha: float) -> dict:
    """theta = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned (floating tensors only)."""
    out = {}
    for k, v in finetuned.items():
        z = zeroshot[k]
        out[k] = (1 - alpha) * z + alpha * v if v.is_floating_point() else v
    return out


def predict(model, *, zeroshot_state: dict, source, transform, alphas, batch_size=512, device="cpu",
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
                    df_logits, cd_logits = m(x)
                    dfs.append(df_logits.float().cpu())
                    cds.append(cd_logits.float().cpu())
        for alpha, (dfs, cds) in zip(alphas, outs):
            tables.append(logits_table(name, split.meta, torch.cat(dfs), torch.cat(cds), alpha=alpha))
    return pa.concat_tables(tables)
