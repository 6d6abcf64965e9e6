"""Logits and per-class vectors as Parquet columns, shared by zeroshot, finetune and evaluate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from drm.base.errors import DRMError, require


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


def unreadable(path, stage: str, error: Exception) -> DRMError:
    """The error for an artifact that exists but cannot be read (truncated, corrupt)."""
    from drm.base.atomic import shown

    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if f"{path}': " in detail:  # pyarrow repeats the path: "Could not open Parquet input source '<path>': ..."
        detail = detail.split(f"{path}': ", 1)[1]
    return DRMError(f"{shown(path)} is unreadable ({detail}): it is truncated or corrupt; "
                    f"rerun the stage that makes it: `dvc repro {stage}`")


def read_table(path, stage: str, columns: list[str] | None = None, filters=None) -> pa.Table:
    """A Parquet artifact of `stage`: missing -> MissingArtifactError, truncated or corrupt ->
    a DRMError naming the file and the stage to rerun. filters: pyarrow's row filters (row
    groups whose statistics exclude them are not read)."""
    import pyarrow.parquet as pq

    path = require(path, stage)
    try:
        return pq.read_table(path, columns=columns, filters=filters)
    except (pa.ArrowException, OSError) as e:
        raise unreadable(path, stage, e) from None


def write_table(table: pa.Table, path) -> Path:
    """Write a Parquet table atomically (drm.base.atomic)."""
    import pyarrow.parquet as pq

    from drm.base.atomic import atomic_file

    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)
