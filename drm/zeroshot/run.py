"""The `zeroshot` stage's library side: zero-shot heads, logits for every split, core estimates.

Artifacts (out_dir):
- heads.safetensors: df [C, D], cd [C, D] (unit rows), logit_scale (scalar, exp'd).
- heads.json: classnames, number of texts per class per head, truncated texts per class.
- logits.parquet: split, id, y, df (float32[C]), cd (float32[C]) for every sample of every split.
- core.parquet (training split): id, y, weighted, ratio (float32); core_soft.npy and
  df_soft.npy: the C-wide soft targets, [N, C] float32 in core.parquet's row order
  (drm.zeroshot.store: written and read batch by batch).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from drm.base.errors import DRMError, require
from drm.base.atomic import atomic_dir
from drm.base.tables import logits_table, unreadable
from drm.base.torch_utils import resolve_device
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
                 progress=True) -> dict | None:
    """Heads, logits and core estimates. Under torch.distributed every rank encodes its share of
    each split's batches (drm.base.distributed.map_batches) and rank 0 writes every file,
    streamed batch by batch: the files are those one process writes. Returns the summary
    (None on the other ranks)."""
    from drm.base import distributed

    classnames = source.classnames
    world, device = distributed.init(resolve_device(runtime.device))
    model.to(device)
    heads, report = build_heads(model, tokenizer, classnames=classnames, texts=texts, device=str(device))
    truncated = sum(report["cd"]["truncated"].values()) + sum(report["df"]["truncated"].values())
    if truncated and world.is_main:
        print(f"zeroshot: {truncated} prompt(s) longer than the model's context "
              f"({report['context_length']} tokens) were truncated; see heads.json")
    if not world.is_main:
        _logits_and_core(model, transform, source=source, heads=heads, cfg=cfg, out=None, device=device,
                         runtime=runtime, progress=False, truncated=truncated, world=world)
        distributed.barrier(world)
        return None
    # Everything is written into a folder beside out_dir, renamed into place once complete.
    with atomic_dir(out_dir) as out:
        save_heads(out, heads, report)
        summary = _logits_and_core(model, transform, source=source, heads=heads, cfg=cfg, out=out, device=device,
                                   runtime=runtime, progress=progress, truncated=truncated, world=world)
    distributed.barrier(world)
    return summary


def _logits_and_core(model, transform, *, source, heads, cfg, out: Path | None, device, runtime, progress,
                     truncated: int, world) -> dict | None:
    """Stream every split's logits into logits.parquet and the training split's core
    estimates into core.parquet, core_soft.npy and df_soft.npy (out None: a rank other than
    0, which only computes its share)."""
    from drm.base.distributed import map_batches
    from drm.zeroshot.core import affinity, normalise_affinity, ratio_weights, soft_targets
    from drm.zeroshot.store import CORE, CORE_SOFT, DF_SOFT, ParquetStream, RowsFile

    if not any(role == "train" for role in source.splits.values()):
        raise DRMError("the data source has no split with role 'train': core estimates need one")
    n_classes, width = heads.df_head.shape
    encode = lambda x: torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)  # noqa: E731
    # a row: split and id strings (~64 B), y, two C-wide float32 logit vectors
    logits = ParquetStream(out / "logits.parquet", row_bytes=64 + 8 * n_classes) if out is not None else None
    summary = None
    with torch.no_grad():
        for split_name in source.splits:
            split = source.load(split_name, transform)
            is_train = split.role == "train"
            n = len(split.dataset)
            if is_train and out is not None:
                soft_file = RowsFile(out / CORE_SOFT, n=n, width=n_classes)
                df_soft_file = RowsFile(out / DF_SOFT, n=n, width=n_classes)
                # N floats each, filled batch by batch: one allocation per column, not one
                # small tensor per batch (those, interleaved with the large per-batch buffers,
                # fragmented the heap so that memory grew ~2 KB per image; docs/scale.md).
                parts = {k: np.empty(n, dtype=np.float32) for k in ("affinity", "ratio", "soft_true")}
            pos = 0
            for features in map_batches(encode, split.dataset, batch_size=cfg.batch_size, width=width, world=world,
                                        device=device, num_workers=runtime.num_workers, progress=progress,
                                        desc=f"zeroshot: encode {split_name}"):
                if out is None:
                    continue
                features = features.cpu()
                meta = split.meta.iloc[pos:pos + len(features)]
                pos += len(features)
                df_logits = zero_shot_logits(features, heads.df_head, heads.logit_scale)
                cd_logits = zero_shot_logits(features, heads.cd_head, heads.logit_scale)
                logits.append(logits_table(split_name, meta, df_logits, cd_logits))
                if is_train:
                    y = torch.tensor(meta["y"].to_numpy(), dtype=torch.long)
                    soft = soft_targets(cd_logits)
                    soft_file.append(soft.numpy())
                    df_soft_file.append(df_logits.float().softmax(-1).numpy())
                    rows = slice(pos - len(features), pos)
                    parts["affinity"][rows] = affinity(features, heads.cd_head, y).numpy()
                    parts["ratio"][rows] = ratio_weights(cd_logits, df_logits, y, cfg.ratio_clip).numpy()
                    parts["soft_true"][rows] = soft.gather(1, y[:, None])[:, 0].numpy()
            if is_train and out is not None:
                soft_file.close()
                df_soft_file.close()
                summary = _write_core(out / CORE, split=split, parts=parts, n_classes=n_classes, truncated=truncated,
                                      normalise=normalise_affinity)
    if out is None:
        return None
    logits.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_core(path: Path, *, split, parts: dict, n_classes: int, truncated: int, normalise) -> dict:
    """core.parquet (id, y, weighted, ratio) and the stage's summary."""
    y = torch.tensor(split.meta["y"].to_numpy(), dtype=torch.long)
    weighted = normalise(torch.from_numpy(parts["affinity"]), y, n_classes)
    ratio = torch.from_numpy(parts["ratio"])
    pq.write_table(pa.table({
        "id": pa.array(split.meta["id"].astype(str).tolist()),
        "y": pa.array(y.numpy().astype(np.int32)),
        "weighted": pa.array(weighted.numpy().astype(np.float32)),
        "ratio": pa.array(ratio.numpy().astype(np.float32)),
    }), path)
    return {
        "n_train": len(y),
        "weighted_mean": float(weighted.mean()),
        "ratio_mean": float(ratio.mean()),
        "soft_true_label_mean": float(torch.from_numpy(parts["soft_true"]).mean()),
        "truncated_prompts": truncated,
    }
