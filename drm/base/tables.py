"""Logits and per-class vectors as Parquet columns, shared by zeroshot, finetune and evaluate."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch


def logits_table(split_name: str, meta, df: torch.Tensor, cd: torch.Tensor, **extra) -> pa.Table:
    """One row per sample: split, id, y, df and cd logits as float32 lists (+ constant extras)."""
    n = len(meta)
    cols = {k: pa.array([v] * n) for k, v in extra.items()}
    cols.update({
        "split": pa.array([split_name] * n),
        "id": pa.array(meta["id"].astype(str).tolist()),
        "y": pa.array(meta["y"].to_numpy().astype(np.int32)),
        "df": list_column(df),
        "cd": list_column(cd),
    })
    return pa.table(cols)


def list_column(t: torch.Tensor) -> pa.Array:
    """A [N, C] tensor as a Parquet fixed-size float32 list column."""
    arr = t.float().numpy().astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


def column_to_tensor(table: pa.Table, name: str) -> torch.Tensor:
    col = table.column(name).combine_chunks()
    width = col.type.list_size
    return torch.from_numpy(col.values.to_numpy(zero_copy_only=False).reshape(-1, width).copy())
