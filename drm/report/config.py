"""Parameters of the report (params.yaml: report)."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from drm.base.params import Strict


class Headline(Strict):
    """A benchmark's headline metrics: columns of metrics/all.csv (e.g. bench_F1-macro_all,
    WILDS' macro-F1 for iWildCam; bench_acc_worst_region for FMoW; accuracy)."""

    id: str = "accuracy"  # on report.id_split
    ood: str = "accuracy"  # on report.ood_split


class ReportConfig(Strict):
    id_split: str = "id_test"
    ood_split: str = "ood_test"
    head: Literal["df", "cd", "dual"] = "dual"
    # [method, baseline] pairs for the same-head comparison table
    comparisons: list[list[str]] = [["drm", "erm"], ["drm", "distill"], ["drm", "drm_ratio"], ["drm", "lpft"],
                                    ["drm_flyp", "flyp"], ["drm_flyp", "distill"]]
    # the benchmark's headline metrics, as a table of their own (null: none; the embedded world's is accuracy)
    headline: Headline | None = None

    @model_validator(mode="after")
    def _pairs(self):
        if any(len(p) != 2 for p in self.comparisons):
            raise ValueError("report.comparisons must be a list of [method, baseline] pairs")
        return self
