"""Parameters of the metrics and dual inference (params.yaml: evaluate)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from drm.base.params import Strict


class EvaluateConfig(Strict):
    # Dual inference weight of the df head, p = beta * p_df + (1 - beta) * p_cd; "val": chosen
    # per method on select_splits (the best OOD-val accuracy among the betas within
    # beta_id_tolerance points of the method's best ID-val accuracy).
    beta: float | Literal["val"] = "val"
    beta_grid: list[float] = [round(0.1 * i, 1) for i in range(11)]
    select_splits: list[str] = Field(["id_val", "ood_val"], min_length=2, max_length=2)  # [ID, OOD]
    beta_id_tolerance: float = Field(2.0, ge=0, le=100)  # points of ID-val accuracy beta may cost
    group_by: list[str] = ["style", "bg", "clarity"]  # group columns for worst-group accuracy

    @model_validator(mode="after")
    def _beta(self):
        if isinstance(self.beta, float) and not 0 <= self.beta <= 1:
            raise ValueError("evaluate.beta must be in [0, 1] or 'val'")
        if not self.beta_grid or any(not 0 <= b <= 1 for b in self.beta_grid):
            raise ValueError("evaluate.beta_grid must be a non-empty list of numbers in [0, 1]")
        return self


# The split evaluate adds for a benchmark whose OOD headline is a mean over several splits.
OOD_MEAN = "ood_mean"


def check_against_source(source, *, data_source: str, evaluate: EvaluateConfig, report) -> None:
    """The evaluate and report settings that name splits or group columns, checked against
    the data before any training (evaluate and report check them again on the metrics)."""
    from drm.base.errors import ConfigError

    problems = []
    missing = [g for g in evaluate.group_by if g not in source.group_columns]
    if missing:
        problems.append(f"evaluate.group_by names {missing}, which this data has no column for; "
                        f"available: {sorted(source.group_columns)}")
    if evaluate.beta == "val":
        gone = [s for s in evaluate.select_splits if s not in source.splits]
        if gone:
            problems.append(f"evaluate.beta 'val' needs the splits evaluate.select_splits {gone}; "
                            f"this data has {list(source.splits)} (or set evaluate.beta to a number)")
    known = list(source.splits) + ([OOD_MEAN] if len(source.ood_average) >= 2 else [])
    gone = [s for s in (report.id_split, report.ood_split) if s not in known]
    if gone:
        problems.append(f"report.id_split/ood_split name {gone}; this data has {known}")
    if problems:
        raise ConfigError(f"params do not fit the data (data.source {data_source!r}):\n  " + "\n  ".join(problems))
