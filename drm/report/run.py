"""The `report` stage: methods side by side (markdown table) and an ID-vs-OOD plot (PNG).

Rows: zero-shot, each fine-tuning method at alpha 1, and each method with WiSE-FT at
alpha 0.5 and at the alpha chosen on the validation splits (highest mean of ID-val and
OOD-val accuracy on the report head). Cells: mean +- std over seeds.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from drm.base.atomic import atomic_file, write_text
from drm.base.errors import require


def _val_alpha(frame, method, head, id_val, ood_val) -> float:
    sub = frame[(frame.method == method) & (frame["head"] == head) & frame.split.isin([id_val, ood_val])
                & (frame.alpha > 0)]  # alpha 0 is the zero-shot model, not a fine-tuned one
    score = sub.groupby("alpha")["accuracy"].mean()
    return float(score.idxmax())


def method_rows(frame: pd.DataFrame, head: str, splits: dict[str, str]) -> pd.DataFrame:
    """One row per (label, method, alpha): mean/std accuracy over seeds on the given splits."""
    val = {r: s for r, s in splits.items()}
    rows = []
    methods = ["zeroshot"] + [m for m in dict.fromkeys(frame.method) if m != "zeroshot"]
    for m in methods:
        if m == "zeroshot":
            variants = [("zero-shot", 0.0)]
        else:
            variants = [(m, 1.0)]
            alphas = set(frame[frame.method == m].alpha)
            if 0.5 in alphas:
                variants.append((f"{m} + WiSE-FT a=0.5", 0.5))
            if "id_val" in val and "ood_val" in val and len(alphas - {0.0}) > 1:
                a = _val_alpha(frame, m, head, val["id_val"], val["ood_val"])
                variants.append((f"{m} + WiSE-FT a={a:g} (val)", a))
        for label, alpha in variants:
            sub = frame[(frame.method == m) & (frame.alpha == alpha) & (frame["head"] == head)]
            row = {"method": label, "base": m, "alpha": alpha, "seeds": sub.seed.nunique()}
            if head == "dual" and "beta" in sub:
                row["beta"] = ", ".join(f"{b:g}" for b in sorted(sub.beta.dropna().unique()))
            for key, split in splits.items():
                acc = sub[sub.split == split].groupby("seed")["accuracy"].mean() * 100
                row[f"{key}_mean"], row[f"{key}_std"] = acc.mean(), acc.std(ddof=0)
            rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(rows: pd.DataFrame, splits: dict[str, str]) -> str:
    beta = "beta" in rows
    head = "| method | seeds | " + ("beta | " if beta else "") + " | ".join(splits) + " |"
    sep = "|---|---|" + ("---|" if beta else "") + "---|" * len(splits)
    lines = [head, sep]
    for _, r in rows.iterrows():
        cells = [f"{r[f'{k}_mean']:.1f} ± {r[f'{k}_std']:.1f}" for k in splits]
        lines.append(f"| {r['method']} | {r['seeds']} | " + (f"{r['beta']} | " if beta else "")
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(frame: pd.DataFrame, pairs: list[list[str]], id_split: str, ood_split: str) -> str:
    """Same-head differences (method minus baseline, points of accuracy, means over seeds) for
    each pair, head and WiSE-FT alpha in {1, 0.5}; pairs naming a method the metrics lack are
    listed as skipped."""
    lines = ["| method vs baseline | alpha | head | ID diff | OOD diff | ID | OOD |", "|---|---|---|---|---|---|---|"]
    skipped = []
    present = set(frame.method)
    for method, base in pairs:
        if method not in present or base not in present:
            skipped.append(f"{method} vs {base}")
            continue
        for alpha in (1.0, 0.5):
            for head in ("dual", "cd", "df"):
                acc = {}
                for m in (method, base):
                    sub = frame[(frame.method == m) & (frame.alpha == alpha) & (frame["head"] == head)]
                    acc[m] = {s: sub[sub.split == s].groupby("seed")["accuracy"].mean().mean() * 100
                              for s in (id_split, ood_split)}
                if any(pd.isna(v) for a in acc.values() for v in a.values()):
                    continue
                d_id = acc[method][id_split] - acc[base][id_split]
                d_ood = acc[method][ood_split] - acc[base][ood_split]
                lines.append(f"| {method} vs {base} | {alpha:g} | {head} | {d_id:+.1f} | {d_ood:+.1f} | "
                             f"{acc[method][id_split]:.1f} vs {acc[base][id_split]:.1f} | "
                             f"{acc[method][ood_split]:.1f} vs {acc[base][ood_split]:.1f} |")
    text = "\n".join(lines)
    if skipped:
        text += "\n\n_Skipped (method not in this run): " + ", ".join(skipped) + "_"
    return text


def plot_id_ood(frame, head, id_split, ood_split, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    sub = frame[frame["head"] == head]
    zs = sub[sub.method == "zeroshot"]
    ax.scatter(zs[zs.split == id_split].accuracy.mean() * 100, zs[zs.split == ood_split].accuracy.mean() * 100,
               marker="*", s=200, c="black", label="zero-shot", zorder=3)
    for m in [m for m in dict.fromkeys(sub.method) if m != "zeroshot"]:
        g = sub[sub.method == m]
        curve = g.groupby(["alpha", "split"])["accuracy"].mean().unstack() * 100
        stds = g.groupby(["alpha", "seed", "split"])["accuracy"].mean().unstack().groupby("alpha").std(ddof=0) * 100
        line, = ax.plot(curve[id_split], curve[ood_split], "-o", ms=3, alpha=0.8, label=f"{m} (WiSE-FT curve)")
        end = curve.loc[curve.index.max()]
        ax.errorbar(end[id_split], end[ood_split], xerr=stds.loc[curve.index.max(), id_split],
                    yerr=stds.loc[curve.index.max(), ood_split], fmt="s", ms=8, c=line.get_color(), zorder=3)
    ax.set_xlabel(f"ID accuracy ({id_split}, %)")
    ax.set_ylabel(f"OOD accuracy ({ood_split}, %)")
    ax.set_title(f"ID vs OOD, {head} head (squares: alpha=1, mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or None)
    plt.close(fig)


def headline_table(frame: pd.DataFrame, headline, head: str, id_split: str, ood_split: str) -> str:
    """The benchmark's headline metrics (percent, mean ± std over seeds) for zero-shot and each
    method at alpha 1 and with WiSE-FT alpha 0.5, on `head`: what the paper's tables report."""
    from drm.base.errors import ConfigError

    gone = [m for m in (headline.id, headline.ood) if m not in frame.columns]
    if gone:
        metrics = [c for c in frame.columns if c == "accuracy" or c.startswith(("bench_", "worst_", "macro"))]
        raise ConfigError(f"report.headline names {gone}, which metrics/all.csv has no column for; its metrics: "
                          f"{metrics}")
    lines = [f"| method | {id_split}: {headline.id} | {ood_split}: {headline.ood} |", "|---|---|---|"]
    methods = ["zeroshot"] + [m for m in dict.fromkeys(frame.method) if m != "zeroshot"]
    for m in methods:
        for alpha in ([0.0] if m == "zeroshot" else [1.0, 0.5]):
            sub = frame[(frame.method == m) & (frame.alpha == alpha) & (frame["head"] == head)]
            if sub.empty:
                continue
            cells = []
            for split, metric in ((id_split, headline.id), (ood_split, headline.ood)):
                v = sub[sub.split == split].groupby("seed")[metric].mean() * 100
                cells.append(f"{v.mean():.1f} ± {v.std(ddof=0):.1f}" if len(v) else "-")
            label = "zero-shot" if m == "zeroshot" else (m if alpha == 1.0 else f"{m} + WiSE-FT a=0.5")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_report(metrics_csv, cfg, out_md, out_png, extra_sections: list[str] | None = None) -> str:
    frame = pd.read_csv(require(metrics_csv, "evaluate"))
    splits_present = list(dict.fromkeys(frame.split))
    missing = [s for s in (cfg.id_split, cfg.ood_split) if s not in splits_present]
    if missing:
        from drm.base.errors import ConfigError

        raise ConfigError(f"report.id_split/ood_split name {missing}, which the metrics do not have; "
                          f"available splits: {splits_present}")
    order = [s for s in ("id_val", "id_test", "ood_val", "ood_test") if s in splits_present]
    order += [s for s in splits_present if s not in order]
    splits = {s: s for s in order}
    parts = ["# DRM report", "",
             f"Accuracy (%) on each split, mean ± std over seeds. Head for the main table: **{cfg.head}**. "
             "WiSE-FT alpha (val) is the alpha > 0 with the best mean of id_val and ood_val accuracy; "
             "selection never reads a test split.", ""]
    if cfg.headline is not None:
        parts += [f"## Headline metrics ({cfg.head} head)", "",
                  "The benchmark's own metrics (%, mean ± std over seeds), as its papers report them.", "",
                  headline_table(frame, cfg.headline, cfg.head, cfg.id_split, cfg.ood_split), ""]
    for head in [cfg.head] + [h for h in ("df", "cd", "dual") if h != cfg.head]:
        rows = method_rows(frame, head, splits)
        parts += [f"## {head} head", "", markdown_table(rows, splits), ""]
    parts += ["## ID vs OOD", "", f"![ID vs OOD]({Path(out_png).name})", ""]
    if cfg.comparisons:
        parts += [f"## Same-head comparisons ({cfg.id_split} / {cfg.ood_split})", "",
                  "Method minus baseline, points of accuracy, mean over seeds; alpha 0.5 is WiSE-FT of each.", "",
                  comparison_table(frame, cfg.comparisons, cfg.id_split, cfg.ood_split), ""]
    # Worst-group accuracies, and benchmark metrics that are rates (not WILDS' count_* fields).
    worst = [c for c in frame.columns if c.startswith("worst_")
             or (c.startswith("bench_") and "count" not in c and frame[c].dropna().between(0, 1).all())]
    if worst:
        sub = frame[(frame["head"] == cfg.head) & (frame.split == cfg.ood_split) & frame.alpha.isin([0.0, 1.0])]
        sub = sub[(sub.method == "zeroshot") | (sub.alpha == 1.0)]
        g = (sub.groupby("method")[worst].mean() * 100).round(1)
        parts += [f"## Worst-group accuracy on {cfg.ood_split} ({cfg.head} head, alpha 1)", "",
                  g.reset_index().to_markdown(index=False), ""]
    parts += extra_sections or []
    text = "\n".join(parts)
    write_text(out_md, text)
    plot_id_ood(frame, cfg.head, cfg.id_split, cfg.ood_split, out_png)
    return text
