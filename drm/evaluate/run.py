"""The `evaluate` stage: metrics for zero-shot and every fine-tuned run, from stored logits.

For each (method, seed, WiSE alpha, split) and head (df, cd, dual with weight beta):
accuracy, macro-F1, worst-group accuracy for each grouping in evaluate.group_by (and over
the class), per-class accuracy, plus the data source's benchmark metrics. No model runs
here, so changing beta reruns only this stage and the report.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch

from drm.base.atomic import atomic_file, write_text
from drm.base.errors import ConfigError, DRMError
from drm.base.tables import column_to_tensor, read_table
from drm.evaluate.config import OOD_MEAN
from drm.evaluate.metrics import accuracy, dual_probs, macro_f1, per_class_accuracy, worst_group_accuracy

HEADS = ("df", "cd", "dual")


def head_predictions(table, beta: float, source=None, split: str | None = None) -> dict:
    """Predicted class per head. With a source, the split is scored as its benchmark defines
    it: classes outside source.class_mask(split) get no probability (e.g. ImageNet-R's 200),
    and predictions go through source.project_predictions (e.g. ObjectNet's class sets)."""
    df = column_to_tensor(table, "df")
    cd = column_to_tensor(table, "cd")
    mask = source.class_mask(split) if source is not None else None
    if mask is not None:
        keep = torch.as_tensor(mask, dtype=torch.bool)
        if keep.numel() != df.shape[-1] or not keep.any():
            raise DRMError(f"split {split!r}: class mask of {keep.numel()} classes ({int(keep.sum())} kept) "
                           f"does not fit {df.shape[-1]} logits")
        df = df.float().masked_fill(~keep, float("-inf"))
        cd = cd.float().masked_fill(~keep, float("-inf"))
    preds = {"df": df.argmax(-1).numpy(), "cd": cd.argmax(-1).numpy(),
             "dual": dual_probs(df, cd, beta).argmax(-1).numpy()}
    if source is not None:
        preds = {h: source.project_predictions(split, p) for h, p in preds.items()}
    return preds


def split_metrics(y, pred, meta, group_by, source, split) -> dict:
    row = {"accuracy": accuracy(y, pred), "macro_f1": macro_f1(y, pred),
           "worst_class_accuracy": min(per_class_accuracy(y, pred).values())}
    for g in group_by:
        row[f"worst_{g}_accuracy"] = worst_group_accuracy(y, pred, meta[g].to_numpy())
    row.update({f"bench_{k}": v for k, v in source.benchmark_metrics(split, meta, pred).items()})
    return row


def evaluate_table(table, method, seed, alpha, source, metas, cfg, beta: float | None = None) -> list[dict]:
    beta = cfg.beta if beta is None else beta
    rows = []
    frame = table.select(["split", "id"]).to_pandas()
    for split in frame["split"].unique():
        if source.splits.get(split) == "train":
            continue
        mask = (frame["split"] == split).to_numpy()
        sub = table.filter(pa.array(mask))
        if split not in metas:
            raise DRMError(f"{method} (seed {seed}) has predictions for split {split!r}, which the data "
                           f"source does not have ({sorted(metas)}): rerun the stages that made them")
        meta = metas[split]
        ids = sub.column("id").to_pylist()
        if ids != meta["id"].astype(str).tolist():
            indexed = meta.set_index(meta["id"].astype(str))
            stale = [i for i in ids if i not in indexed.index]
            if stale or len(ids) != len(indexed):
                raise DRMError(f"{method} (seed {seed}): predictions on {split!r} do not match the data "
                               f"({len(stale)} unknown ids, {len(ids)} vs {len(indexed)} samples): the data "
                               "changed since they were made; rerun `dvc repro`")
            meta = indexed.loc[ids].reset_index(drop=True)
        y = sub.column("y").to_numpy()
        preds = head_predictions(sub, beta, source, split)
        for head in HEADS:
            rows.append({"method": method, "seed": seed, "alpha": alpha, "split": split,
                         "role": source.splits[split], "head": head, "beta": beta if head == "dual" else None,
                         **split_metrics(y, preds[head], meta, cfg.group_by, source, split)})
    return rows


def _split_filter(table, column, value):
    return table.filter(pa.array(table.column(column).to_numpy(zero_copy_only=False) == value))


def select_beta(tables: list, grid: list[float], splits: tuple[str, str], id_tolerance: float = 1.0,
                source=None) -> float:
    """The dual-inference beta with the best OOD-val accuracy among those whose ID-val
    accuracy is within id_tolerance points of the best ID-val accuracy over the grid;
    accuracies are means over the given tables (one per seed); ties go to beta nearest 0.5."""
    import numpy as np

    id_split, ood_split = splits

    def acc(beta, split):
        out = []
        for table in tables:
            sub = _split_filter(table, "split", split)
            out.append(float((head_predictions(sub, beta, source, split)["dual"] == sub.column("y").to_numpy()).mean()))
        return float(np.mean(out))

    ids = {b: acc(b, id_split) for b in grid}
    ok = [b for b in grid if ids[b] >= max(ids.values()) - id_tolerance / 100 - 1e-12]
    oods = {b: acc(b, ood_split) for b in ok}
    best = max(oods.values())
    return min((b for b in ok if oods[b] >= best - 1e-12), key=lambda b: abs(b - 0.5))


def run_evaluate(source, zs_dir, runs: dict[tuple[str, int], Path], cfg, out_csv, out_json,
                 progress: bool = True) -> pd.DataFrame:
    """runs: (method, seed) -> run directory holding predictions.parquet.

    evaluate.beta is a number, or "val": then beta is chosen per method on the validation
    splits (select_splits) at alpha 1 (zero-shot: alpha 0) by select_beta, used for every
    WiSE-FT alpha of that method, and recorded in the `beta` column."""
    metas = {s: source.load(s).meta for s, r in source.splits.items() if r != "train"}
    missing = [g for g in cfg.group_by if any(g not in m.columns for m in metas.values())]
    if missing:
        raise ConfigError(f"evaluate.group_by names {missing}, which the data has no column for; "
                          f"available: {sorted(source.group_columns)}")
    by_val = cfg.beta == "val"
    if by_val and any(s not in metas for s in cfg.select_splits):
        raise ConfigError(f"evaluate.beta 'val' needs the splits {cfg.select_splits}; "
                          f"this data has {sorted(metas)}")
    # Not the training split's rows: evaluate never uses them, and they are most of the file
    # (ImageNet: 1.28M x 2 x 1000 float32, 10 GB).
    train = [s for s, r in source.splits.items() if r == "train"]
    zs = read_table(Path(zs_dir) / "logits.parquet", "zeroshot",
                    filters=[("split", "not in", train)] if train else None)
    groups: dict[tuple[str, float], list] = {("zeroshot", 0.0): [(-1, zs)]}
    for (method, seed), run_dir in runs.items():
        table = read_table(Path(run_dir) / "predictions.parquet", f"finetune@{method}-{seed}")
        for alpha in sorted(set(table.column("alpha").to_pylist())):
            groups.setdefault((method, float(alpha)), []).append((seed, _split_filter(table, "alpha", alpha)))
    chosen = {}
    for (method, alpha), tabs in groups.items():
        if alpha == max(a for m, a in groups if m == method):  # the fine-tuned model itself
            chosen[method] = (select_beta([t for _, t in tabs], cfg.beta_grid, tuple(cfg.select_splits),
                                          cfg.beta_id_tolerance, source) if by_val else float(cfg.beta))
    betas = {(method, alpha): chosen[method] for method, alpha in groups}
    zs_rows = evaluate_table(zs, "zeroshot", -1, 0.0, source, metas, cfg, betas[("zeroshot", 0.0)])
    rows = list(zs_rows)
    for (method, seed) in runs:
        # WiSE-FT alpha 0 is the zero-shot model itself: its rows, under this run's name.
        rows += [{**r, "method": method, "seed": seed} for r in zs_rows]
    from tqdm import tqdm

    todo = [(m, a, seed, t) for (m, a), tabs in groups.items() if m != "zeroshot" for seed, t in tabs]
    for method, alpha, seed, table in tqdm(todo, desc="evaluate: runs x alphas", disable=not progress):
        rows += evaluate_table(table, method, seed, alpha, source, metas, cfg, betas[(method, alpha)])
    if not rows:
        raise DRMError("nothing to evaluate")
    frame = add_ood_mean(pd.DataFrame(rows), [s for s in source.ood_average if s in metas])
    with atomic_file(out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    write_text(out_json, json.dumps(summary_metrics(frame), indent=2) + "\n")
    return frame




def add_ood_mean(frame: pd.DataFrame, splits: list[str]) -> pd.DataFrame:
    """Rows of split `ood_mean`: each metric averaged over `splits` (a benchmark's OOD headline,
    e.g. the mean top-1 over ImageNet's shifts), per method, seed, alpha and head."""
    if len(splits) < 2:
        return frame
    keys = ["method", "seed", "alpha", "head"]
    sub = frame[frame["split"].isin(splits)]
    have = sub.groupby(keys, dropna=False)["split"].agg(set)
    short = {k: sorted(set(splits) - v) for k, v in have.items() if v != set(splits)}
    if short:
        (method, seed, alpha, _), missing = next(iter(short.items()))
        raise DRMError(f"{OOD_MEAN}: {method} (seed {seed}, alpha {alpha}) has no rows for {missing}: "
                       "its predictions predate those splits; rerun its finetune stage (`dvc repro`)")
    numeric = [c for c in sub.columns if c not in keys + ["split", "role", "beta"]
               and pd.api.types.is_numeric_dtype(sub[c])]
    # a metric missing (NaN) on one split leaves the mean NaN rather than averaging fewer splits
    mean = sub.groupby(keys, dropna=False)[numeric].agg(lambda c: c.mean(skipna=False)).reset_index()
    beta = sub.groupby(keys, dropna=False)["beta"].first().reset_index()
    mean = mean.merge(beta, on=keys)
    mean["split"], mean["role"] = OOD_MEAN, "ood"
    return pd.concat([frame, mean[[c for c in frame.columns if c in mean.columns]]], ignore_index=True)


def summary_metrics(frame: pd.DataFrame) -> dict:
    """Nested dict for `dvc metrics show/diff`: method[+wiseA] -> split -> head -> mean accuracy."""
    out: dict = {}
    for (method, alpha, split, head), g in frame.groupby(["method", "alpha", "split", "head"]):
        if method != "zeroshot" and alpha not in (1.0, 0.5):
            continue
        name = method if alpha == 1.0 or method == "zeroshot" else f"{method}+wise{alpha:g}"
        out.setdefault(name, {}).setdefault(split, {})[head] = round(float(g["accuracy"].mean()), 4)
    return out
