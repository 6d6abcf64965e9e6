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

from drm.base.clip import encode_split
from drm.base.errors import DRMError, require
from drm.base.atomic import atomic_dir
from drm.base.tables import list_column, logits_table, unreadable
from drm.base.torch_utils import resolve_device
from drm.zeroshot.core import core_estimates
from drm.zeroshot.heads import ClassTexts, ZeroShotHeads, text_head, zero_shot_logits


def build_heads(model, tokenizer, *, classnames: list[str], texts: ClassTexts, device="cpu"):
    """(ZeroShotHeads, a JSON-able report of texts per class and truncations)."""
    df_head, df_trunc = text_head(model, tokenizer, texts.df_texts, device)
    cd_head, cd_trunc = text_head(model, tokenizer, texts.cd_texts, device)
    heads = ZeroShotHeads(df_head=df_head, cd_head=cd_head, logit_scale=float(model.logit_scale.detach().exp()))
    report = {
        "classnames": classnames,
        "logit_scale": heads.logit_scale,
        "df": {"texts_per_class": len(texts.df_texts[0]) if texts.df_texts else 0,
               "truncated": dict(zip(classnames, df_trunc))},
        "cd": {"texts_per_class": {c: len(t) for c, t in zip(classnames, texts.cd_texts)},
               "truncated": dict(zip(classnames, cd_trunc))},
        "context_length": getattr(tokenizer, "context_length", None),
    }
    return heads, report


def save_heads(out_dir, heads: ZeroShotHeads, report: dict) -> None:
    """Write heads.safetensors and heads.json into out_dir (run_zeroshot: a folder that is
    renamed into place once complete)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"df": heads.df_head.contiguous(), "cd": heads.cd_head.contiguous(),
               "logit_scale": torch.tensor(heads.logit_scale)}, str(out / "heads.safetensors"))
    (out / "heads.json").write_text(json.dumps(report, indent=2) + "\n")


def load_heads(zs_dir) -> ZeroShotHeads:
    path = require(Path(zs_dir) / "heads.safetensors", "zeroshot")
    try:
        h = load_file(str(path))
    except Exception as e:  # safetensors' own error type for a truncated or corrupt file
        raise unreadable(path, "zeroshot", e) from None
    return ZeroShotHeads(df_head=h["df"], cd_head=h["cd"], logit_scale=float(h["logit_scale"]))


def run_zeroshot(model, tokenizer, transform, *, source, texts: ClassTexts, cfg, out_dir, runtime,
                 progress=True) -> dict:
    classnames = source.classnames
    device = str(resolve_device(runtime.device))
    heads, report = build_heads(model, tokenizer, classnames=classnames, texts=texts, device=device)
    truncated = sum(report["cd"]["truncated"].values()) + sum(report["df"]["truncated"].values())
    if truncated:
        print(f"zeroshot: {truncated} prompt(s) longer than the model's context "
              f"({report['context_length']} tokens) were truncated; see heads.json")
    # Everything is written into a folder beside out_dir, renamed into place once complete.
    with atomic_dir(out_dir) as out:
        save_heads(out, heads, report)
        return _logits_and_core(model, transform, source=source, heads=heads, cfg=cfg, out=out, device=device,
                                runtime=runtime, progress=progress, truncated=truncated)


def _logits_and_core(model, transform, *, source, heads, cfg, out: Path, device, runtime, progress,
                     truncated: int) -> dict:
    tables, train = [], None
    for split_name in source.splits:
        split = source.load(split_name, transform)
        features = encode_split(model.encode_image, split, batch_size=cfg.batch_size, device=device,
                                num_workers=runtime.num_workers, progress=progress,
                                desc=f"zeroshot: encode {split_name}")
        df_logits = zero_shot_logits(features, heads.df_head, heads.logit_scale)
        cd_logits = zero_shot_logits(features, heads.cd_head, heads.logit_scale)
        tables.append(logits_table(split_name, split.meta, df_logits, cd_logits))
        if split.role == "train":
            train = (split, features, df_logits, cd_logits)
    if train is None:
        raise DRMError("the data source has no split with role 'train': core estimates need one")
    pq.write_table(pa.concat_tables(tables), out / "logits.parquet")
    split, features, df_logits, cd_logits = train
    y = torch.tensor(split.meta["y"].to_numpy(), dtype=torch.long)
    est = core_estimates(features, heads.cd_head, df_logits, cd_logits, y, cfg.ratio_clip)
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
