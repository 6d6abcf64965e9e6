"""Premise 4 of the diagnostics: the problem exists (ERM gains ID accuracy over zero-shot and
loses OOD accuracy), read from the evaluate stage's metrics; the report appends it."""
from __future__ import annotations

import pandas as pd

from drm.base.errors import require


def problem_exists(metrics_csv, id_split="id_val", ood_split="ood_val") -> dict:
    frame = pd.read_csv(require(metrics_csv, "evaluate"))
    out = {}
    if "erm" not in set(frame.method):
        return {"note": "no 'erm' runs in the metrics: add erm to finetune.methods to measure this"}
    for head in ("df", "dual"):
        def acc(method, split, alpha):
            sub = frame[(frame.method == method) & (frame.split == split) & (frame["head"] == head)
                        & (frame.alpha == alpha)]
            return float(sub.accuracy.mean())

        zs_id, zs_ood = acc("zeroshot", id_split, 0.0), acc("zeroshot", ood_split, 0.0)
        erm_id, erm_ood = acc("erm", id_split, 1.0), acc("erm", ood_split, 1.0)
        out[head] = {"zeroshot": {id_split: zs_id, ood_split: zs_ood}, "erm": {id_split: erm_id, ood_split: erm_ood},
                     "erm_gains_id": erm_id > zs_id, "erm_loses_ood": erm_ood < zs_ood}
    return out


def problem_markdown(e: dict) -> str:
    """Premise 4, from the evaluate stage's metrics (the report appends it)."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
    if "note" in e:
        return f"4. **The problem exists**: not measured ({e['note']}).\n"
    lines = ["4. **The problem exists** (ERM vs zero-shot, validation accuracy %):", "",
             "| head | zero-shot ID | ERM ID | zero-shot OOD | ERM OOD | ERM gains ID | ERM loses OOD |",
             "|---|---|---|---|---|---|---|"]
    for h, v in e.items():
        i, o = list(v["zeroshot"])
        lines.append(f"| {h} | {pct(v['zeroshot'][i])} | {pct(v['erm'][i])} | {pct(v['zeroshot'][o])} | "
                     f"{pct(v['erm'][o])} | {v['erm_gains_id']} | {v['erm_loses_ood']} |")
    return "\n".join(lines) + "\n"
