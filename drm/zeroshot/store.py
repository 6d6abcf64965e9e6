"""The zeroshot stage's artifacts on disk, written batch by batch and read without loading
them whole, so memory stays flat in the number of images N.

- logits.parquet: split, id, y, df, cd: rows appended as batches arrive (ParquetStream:
  row groups of a fixed size in bytes, so the file does not depend on how the rows were
  batched or sharded across ranks).
- core.parquet: id, y, weighted, ratio: the scalar core estimates, one row per training image.
- core_soft.npy, df_soft.npy: [N, C] float32, in core.parquet's row order: the pre-trained
  cd distribution p_c(.|x) (DRM's soft targets) and df distribution p_df(.|x) (the
  distillation control's targets). These are the C-wide part (ImageNet: 1.28M x 1000 x 4 B
  = 5.1 GB each); fine-tuning reads only each batch's rows with positioned reads
  (RowsFile.rows). A memory map would do the same I/O, but its pages count as the process's
  resident memory as an epoch touches them, which is what we must keep flat (docs/scale.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from drm.base.errors import DRMError, require
from drm.base.tables import read_table, unreadable

CORE = "core.parquet"
CORE_SOFT = "core_soft.npy"
DF_SOFT = "df_soft.npy"
# Parquet row groups of about this many bytes (at least one row): bounded memory while writing.
ROW_GROUP_BYTES = 64 * 2**20


class ParquetStream:
    """A Parquet file written from tables appended in order, in row groups of a size fixed
    by the row width alone: the same rows give the same file however they were batched."""

    def __init__(self, path, *, row_bytes: int):
        self.path, self.writer, self.pending, self.buffered = Path(path), None, [], 0
        self.rows_per_group = max(1, ROW_GROUP_BYTES // max(1, row_bytes))

    def append(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.buffered += table.num_rows
        while self.buffered >= self.rows_per_group:
            self._flush(self.rows_per_group)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self.pending)
        group, rest = table.slice(0, rows), table.slice(rows)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, group.schema)
        self.writer.write_table(group, row_group_size=rows)
        self.pending, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self.buffered or self.writer is None:
            if self.writer is None and not self.pending:
                raise DRMError(f"{self.path}: no rows to write")
            self._flush(self.buffered)
        self.writer.close()


class RowsFile:
    """An [n, width] float32 .npy file: appended row batches in order (write mode), or read
    back row by row with positioned reads (read mode), never loaded whole."""

    def __init__(self, path, *, n: int | None = None, width: int | None = None, stage: str = "zeroshot"):
        self.path, self.stage = Path(path), stage
        if n is not None:  # write mode
            self.n, self.width, self.written = n, width, 0
            self._file = open(self.path, "wb")
            np.lib.format.write_array_header_1_0(
                self._file, {"descr": "<f4", "fortran_order": False, "shape": (n, width)})
            return
        require(self.path, stage)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                         else np.lib.format.read_array_header_2_0(f))
            except ValueError as e:
                raise unreadable(self.path, stage, e) from None
            self.offset = f.tell()
        if fortran or dtype != np.dtype("<f4") or len(shape) != 2:
            raise unreadable(self.path, stage, ValueError(f"expected [n, C] float32, found {shape} {dtype}"))
        self.n, self.width = shape
        self.row_bytes = self.width * 4
        size = self.path.stat().st_size
        if size != self.offset + self.n * self.row_bytes:
            raise unreadable(self.path, stage, ValueError(
                f"{size} bytes where {self.offset + self.n * self.row_bytes} were expected"))
        self._fd = os.open(self.path, os.O_RDONLY)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype="<f4")
        if rows.ndim != 2 or rows.shape[1] != self.width or self.written + len(rows) > self.n:
            raise DRMError(f"{self.path}: rows of shape {rows.shape} do not fit [{self.n}, {self.width}]")
        self._file.write(rows.tobytes())
        self.written += len(rows)

    def close(self) -> None:
        if hasattr(self, "_file"):
            self._file.close()
            if self.written != self.n:
                raise DRMError(f"{self.path}: {self.written} rows written of {self.n}")
        elif hasattr(self, "_fd"):
            os.close(self._fd)
            del self._fd

    def rows(self, idx) -> np.ndarray:
        """Rows idx (any order, repeats allowed), each one positioned read into the result."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.width), dtype=np.float32)
        for k, i in enumerate(idx):
            got = os.preadv(self._fd, [memoryview(out[k]).cast("B")], self.offset + int(i) * self.row_bytes)
            if got != self.row_bytes:
                raise unreadable(self.path, self.stage, ValueError(f"row {i} is short"))
        return out

    def __getstate__(self):  # DataLoader workers reopen the file (an fd does not pickle)
        state = dict(self.__dict__)
        state.pop("_fd", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fd = os.open(self.path, os.O_RDONLY)


@dataclass
class CoreEstimates:
    """The core estimates of the training split, aligned to its meta order: scalar
    estimators in memory (N floats each), the C-wide targets read per batch."""

    weighted: torch.Tensor
    ratio: torch.Tensor
    soft: RowsFile
    df_soft: RowsFile
    order: np.ndarray | None  # meta position -> core row; None when they coincide

    @classmethod
    def open(cls, zs_dir, meta) -> "CoreEstimates":
        zs_dir = Path(zs_dir)
        table = read_table(zs_dir / CORE, "zeroshot", columns=["id", "weighted", "ratio"])
        ids = table.column("id").combine_chunks()
        want = pa.array(meta["id"].astype(str).tolist())
        order = None
        if not ids.equals(want):
            import pandas as pd

            order = pd.Index(ids.to_numpy(zero_copy_only=False)).get_indexer(want.to_numpy(zero_copy_only=False))
            missing = want.to_numpy(zero_copy_only=False)[order < 0]
            if len(missing):
                raise DRMError(f"core.parquet lacks {len(missing)} training sample(s) (e.g. {list(missing[:3])}): "
                               "the data changed since the zeroshot stage ran; rerun `dvc repro zeroshot`")
        soft, df_soft = RowsFile(zs_dir / CORE_SOFT), RowsFile(zs_dir / DF_SOFT)
        for f in (soft, df_soft):
            if f.n != len(ids):
                raise DRMError(f"{f.path} has {f.n} rows but core.parquet {len(ids)}: the zeroshot artifacts are "
                               "from different runs; rerun `dvc repro zeroshot`")

        def scalar(name):
            v = torch.from_numpy(table.column(name).to_numpy().astype(np.float32))
            return v if order is None else v[torch.from_numpy(order)]

        return cls(weighted=scalar("weighted"), ratio=scalar("ratio"), soft=soft, df_soft=df_soft, order=order)

    def rows(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every estimator's values for the training samples idx (meta positions)."""
        rows = idx.numpy() if self.order is None else self.order[idx.numpy()]
        return {"weighted": self.weighted[idx], "ratio": self.ratio[idx],
                "soft": torch.from_numpy(self.soft.rows(rows)), "df_soft": torch.from_numpy(self.df_soft.rows(rows))}

    def close(self) -> None:
        self.soft.close()
        self.df_soft.close()
