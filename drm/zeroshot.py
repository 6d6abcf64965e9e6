"""The `zeroshot` stage's library side: zero-shot heads, logits for every split, core estimates.

Artifacts (out_dir):
- heads.safetensors: df [C, D], cd [C, D] (unit rows), logit_scale (scalar, exp'd).
- heads.json: classnames, number of texts per class per head, truncated texts per class.
- logits.parquet: split, id, y, df (float32[C]), cd (float32[C]) for every sample of every split.
- core.parquet (training split): id, y, weighted, ratio (float32), soft, df_soft (float32[C]).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from drm.core import core_estimates
from drm.errors import DRMError, require
from drm.heads import cd_texts, df_texts, text_head, zero_shot_logits
from drm.inference import list_column, encode_split, logits_table

LOGITS_SCHEMA = "split: string, id: string, y: int32, df: fixed_size_list<float32>[C], cd: fixed_size_list<float32>[C]"
CORE_SCHEMA = "id: string, y: int32, weighted: float32, ratio: float32, soft: fixed_size_list<float32>[C], df_soft: fixed_size_list<float32>[C]"


def build_heads(model, tokenizer, classnames, templates, descriptions, device="cpu"):
    df, df_trunc = text_head(model, tokenizer, df_texts(classnames, templates), device)
    cd, cd_trunc = text_head(model, tokenizer, cd_texts(classnames, descriptions), device)
    scale = float(model.logit_scale.detach().exp())
    report = {
        "classnames": classnames,
        "logit_scale": scale,
        "df": {"texts_per_class": len(templates), "truncated": dict(zip(classnames, df_trunc))},
        "cd": {"texts_per_class": {c: len(descriptions[c]) for c in classnames},
               "truncated": dict(zip(classnames, cd_trunc))},
        "context_length": getattr(tokenizer, "context_length", None),
    }
    return df, cd, scale, report


def save_heads(out_dir, df, cd, scale, report):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"df": df.contiguous(), "cd": cd.contiguous(), "logit_scale": torch.tensor(scale)},
              str(out / "heads.safetensors"))
    (out / "heads.json").write_text(json.dumps(report, indent=2) + "\n")


def load_heads(zs_dir):
    h = load_file(str(require(Path(zs_dir) / "heads.safetensors", "zeroshot")))
    return h["df"], h["cd"], float(h["logit_scale"])


def run_zeroshot(model, tokenizer, transform, source, descriptions, cfg, out_dir,
                 device="cpu", num_workers=0, progress=True) -> dict:
    classnames = source.classnames
    df, cd, scale, report = build_heads(model, tokenizer, classnames, cfg.templates, descriptions, device)
    truncated = sum(report["cd"]["truncated"].values()) + sum(report["df"]["truncated"].values())
    if truncated:
        print(f"zeroshot: {truncated} prompt(s) longer than the model's context "
              f"({report['context_length']} tokens) were truncated; see heads.json")
    save_heads(out_dir, df, cd, scale, report)
    tables, train = [], None
    for split_name in source.splits:
        split = source.load(split_name, transform)
        feats = encode_split(model.encode_image, split, cfg.batch_size, device, num_workers, progress,
                             desc=f"zeroshot: encode {split_name}")
        df_logits = zero_shot_logits(feats, df, scale)
        cd_logits = zero_shot_logits(feats, cd, scale)
        tables.append(logits_table(split_name, split.meta, df_logits, cd_logits))
        if split.role == "train":
            train = (split, feats, df_logits, cd_logits)
    if train is None:
        raise DRMError("the data source has no split with role 'train': core estimates need one")
    out = Path(out_dir)
    pq.write_table(pa.concat_tables(tables), out / "logits.parquet")
    split, feats, df_logits, cd_logits = train
    y = torch.tensor(split.meta["y"].to_numpy(), dtype=torch.long)
    est = core_estimates(feats, cd, df_logits, cd_logits, y, cfg.ratio_clip)
    core = pa.table({
        "id": pa.array(split.meta["id"].astype(str).tolist()),
        "y": pa.array(y.numpy().astype(np.int32)),
        "weighted": pa.array(est["weighted"].numpy().astype(np.float32)),
        "ratio": pa.array(est["ratio"].numpy().astype(np.float32)),
        "soft": list_column(est["soft"]),
        "df_soft": list_column(est["df_soft"]),
    })
    pq.write_table(core, out / "core.parquet")
    summary = {
        "n_train": len(y),
        "weighted_mean": float(est["weighted"].mean()),
        "ratio_mean": float(est["ratio"].mean()),
        "soft_true_label_mean": float(est["soft"].gather(1, y[:, None]).mean()),
        "truncated_prompts": truncated,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
