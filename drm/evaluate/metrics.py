"""Classification metrics and dual inference (sklearn where it has the metric)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score


def dual_probs(df_logits: torch.Tensor, cd_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """Dual inference: p = beta * softmax(df) + (1 - beta) * softmax(cd)."""
    return beta * df_logits.float().softmax(-1) + (1 - beta) * cd_logits.float().softmax(-1)


def accuracy(y_true, y_pred) -> float:
    return float(accuracy_score(y_true, y_pred))


def macro_f1(y_true, y_pred) -> float:
    """Macro-F1 over the classes present in the true labels (as WILDS' iWildCam does)."""
    labels = np.unique(y_true)
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def per_class_accuracy(y_true, y_pred) -> dict[int, float]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {int(c): float((y_pred[y_true == c] == c).mean()) for c in np.unique(y_true)}


def group_accuracy(y_true, y_pred, groups) -> dict[str, float]:
    """Accuracy per group value (groups with at least one sample)."""
    frame = pd.DataFrame({"ok": np.asarray(y_true) == np.asarray(y_pred), "g": np.asarray(groups)})
    return {str(k): float(v) for k, v in frame.groupby("g")["ok"].mean().items()}


def worst_group_accuracy(y_true, y_pred, groups) -> float:
    return min(group_accuracy(y_true, y_pred, groups).values())
