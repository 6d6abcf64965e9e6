"""Diagnostics: does the world satisfy the method's premises? (the `diagnostics` stage)

1. core features: a linear probe on the pre-trained model's frozen image features predicts
   the class on images whose non-core features are random (ood_val; id_val off-context);
2. cd prompts detect core features better than df prompts (the paper's Figure 2): render
   controlled pairs and measure how much the affinity to the true class's prompt moves when
   the non-core features (background, colours, style) are swapped vs when the object is;
3. the core estimates carry information: their mean differs between training samples whose
   background agrees with the label and those where it doesn't, and between clear and
   unclear (small or faint) objects;
4. the problem exists: ERM raises ID-val accuracy over zero-shot and lowers OOD-val accuracy
   (from the evaluate stage's metrics: drm.diagnostics.problem, which the report runs, so
   beta never reruns 1-3).
Everything here reads validation splits (or fresh renders), never the test splits.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from drm.base.atomic import write_text
from drm.base.tables import read_table


def linear_probe(features: np.ndarray, y: np.ndarray, folds: int = 3, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_score

    cv = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(LogisticRegression(max_iter=3000), features, y, cv=cv).mean())


def transfer_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float | None:
    """Accuracy on (test_x, test_y) of a probe fitted on (train_x, train_y); None if no test samples."""
    from sklearn.linear_model import LogisticRegression

    if len(test_y) == 0:
        return None
    return float((LogisticRegression(max_iter=3000).fit(train_x, train_y).predict(test_x) == test_y).mean())


def probe_core(encode, source, transform, batch_size=512) -> dict:
    """The probe, cross-validated on ood_val (random backgrounds, unseen styles); then the
    ood_val probe applied to the id_val images whose background is not their class's (few
    of them at a high spurious rate: their count is reported)."""
    from drm.base.clip import encode_split

    out = {"chance": 1 / len(source.classnames)}
    data = {}
    for name in ("ood_val", "id_val"):
        split = source.load(name, transform)
        data[name] = (encode_split(encode, split, batch_size=batch_size, progress=False).numpy(), split.meta)
    feats, meta = data["ood_val"]
    y = meta["y"].to_numpy()
    out["ood_val"] = {"n": len(y), "probe_accuracy": linear_probe(feats, y)}
    id_feats, id_meta = data["id_val"]
    off = ~id_meta["bg_match"].to_numpy()
    out["id_val_off_context"] = {"n": int(off.sum()), "probe_accuracy": transfer_probe(
        feats, y, id_feats[off], id_meta["y"].to_numpy()[off])}
    return out


def swap_pairs(world_cfg, n: int, seed: int):
    """Base images and two controlled variants: non-core swapped (background, object colour,
    style) and object swapped (another shape, everything else kept). Returns uint8 arrays and
    the base labels."""
    from drm.world.render import CLASSNAMES, MAX_TURN, PALETTE, STYLES, _colours, render

    rng = np.random.default_rng(seed)
    C, canvas = len(CLASSNAMES), world_cfg.canvas
    colours = np.array(list(PALETTE.values()))
    y = rng.integers(0, C, n)
    y_other = (y + rng.integers(1, C, n)) % C
    style = rng.integers(0, len(STYLES), n)
    style_other = (style + rng.integers(1, len(STYLES), n)) % len(STYLES)
    bg_i = rng.integers(0, len(colours), n)
    bg_other = (bg_i + rng.integers(1, len(colours), n)) % len(colours)
    radius = rng.uniform(*world_cfg.radius, n) * canvas
    contrast = rng.uniform(max(0.5, world_cfg.contrast[0]), max(0.5, world_cfg.contrast[1]), n)
    cx = rng.uniform(radius + 2, canvas - radius - 2)
    cy = rng.uniform(radius + 2, canvas - radius - 2)
    turn = rng.uniform(-MAX_TURN, MAX_TURN, n)  # tan(rotation / 2), as the world draws it
    noise = np.full(n, world_cfg.noise[0])
    fg = _colours(rng, colours[bg_i], contrast)
    fg_other = _colours(rng, colours[bg_other], contrast)

    def draw(shape, sty, bg, fgc):  # same noise draw for every variant
        return render(shape, sty, bg, fgc, cx, cy, radius, turn, noise, np.random.default_rng(seed + 1),
                      canvas, world_cfg.image_size)

    base = draw(y, style, colours[bg_i], fg)
    noncore = draw(y, style_other, colours[bg_other], fg_other)
    obj = draw(y_other, style, colours[bg_i], fg)
    return base, noncore, obj, y


def swap_sensitivity(encode, transform, heads, world_cfg, n=500, seed=123) -> dict:
    """Mean |change| of cos(image, true class's prompt) per head under each swap."""
    from PIL import Image

    df, cd = heads
    base, noncore, obj, y = swap_pairs(world_cfg, n, seed)

    @torch.no_grad()
    def feats(arr):
        x = torch.stack([transform(Image.fromarray(a)) for a in arr])
        return torch.nn.functional.normalize(encode(x).float(), dim=-1)

    fb, fn, fo = feats(base), feats(noncore), feats(obj)
    yt = torch.as_tensor(y)
    out = {"n_pairs": n}
    for name, head in (("df", df), ("cd", cd)):
        a = lambda f: (f * head[yt]).sum(-1)
        d_non = (a(fb) - a(fn)).abs().mean().item()
        d_obj = (a(fb) - a(fo)).abs().mean().item()
        out[name] = {"delta_noncore": d_non, "delta_object": d_obj, "noncore_over_object": d_non / max(d_obj, 1e-12)}
    out["cd_more_core_than_df"] = out["cd"]["noncore_over_object"] < out["df"]["noncore_over_object"]
    return out


def core_information(zs_dir, train_meta: pd.DataFrame) -> dict:
    from drm.zeroshot.store import CORE, CORE_SOFT, RowsFile

    core = read_table(Path(zs_dir) / CORE, "zeroshot").to_pandas()
    soft = RowsFile(Path(zs_dir) / CORE_SOFT)
    core["soft_p_true"] = soft.rows(np.arange(len(core)))[np.arange(len(core)), core["y"].to_numpy()]
    soft.close()
    core = core.set_index("id")
    meta = train_meta.set_index(train_meta["id"].astype(str))
    core = core.loc[meta.index]
    p_true = core["soft_p_true"].to_numpy()
    frame = pd.DataFrame({"weighted": core["weighted"].to_numpy(), "soft_p_true": p_true,
                          "ratio": core["ratio"].to_numpy(), "bg_match": meta["bg_match"].to_numpy(),
                          "clear": (meta["clarity"] == "clear").to_numpy()})
    out = {}
    for group in ("bg_match", "clear"):
        g = frame.groupby(group)[["weighted", "soft_p_true", "ratio"]].mean()
        out[group] = {str(bool(k)): {c: float(v) for c, v in row.items()} for k, row in g.iterrows()}
    out["clear_minus_unclear"] = {c: out["clear"]["True"][c] - out["clear"].get("False", {}).get(c, np.nan)
                                  for c in ("weighted", "soft_p_true", "ratio")}
    return out


def to_markdown(d: dict) -> str:
    p, s, c = d["probe"], d["swap"], d["core"]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
    lines = [
        "## Diagnostics: the method's premises, measured on validation splits", "",
        f"1. **Core features exist.** Linear probe on frozen pre-trained image features (3-fold CV): "
        f"ood_val (random backgrounds, unseen styles) {pct(p['ood_val']['probe_accuracy'])}%; "
        f"the ood_val probe on the {p['id_val_off_context']['n']} id_val images with another class's "
        f"background {pct(p['id_val_off_context']['probe_accuracy'])}% (chance {pct(p['chance'])}%).",
        f"2. **cd prompts are better core detectors than df prompts** ({s['n_pairs']} rendered pairs; "
        "mean |change| of the cosine to the true class's prompt):", "",
        "| head | non-core swapped (bg, colour, style) | object swapped | ratio |", "|---|---|---|---|",
    ]
    for h in ("df", "cd"):
        lines.append(f"| {h} | {s[h]['delta_noncore']:.4f} | {s[h]['delta_object']:.4f} | {s[h]['noncore_over_object']:.3f} |")
    lines += ["", f"   Premise {'holds' if s['cd_more_core_than_df'] else 'FAILS'}: the cd ratio is "
              f"{'lower' if s['cd_more_core_than_df'] else 'not lower'} than the df ratio.",
              "3. **Core estimates carry information** (training split, means):", "",
              "| group | weighted | soft p_c(y\\|x) | ratio |", "|---|---|---|---|"]
    for group, label in (("bg_match", "background agrees with label"), ("clear", "clear object")):
        for k, v in c[group].items():
            lines.append(f"| {label}: {k} | {v['weighted']:.3f} | {v['soft_p_true']:.3f} | {v['ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def run_diagnostics(model, transform, *, source, heads, world_cfg, zs_dir, out_json, out_md, progress=True) -> dict:
    from tqdm import tqdm

    encode = model.encode_image
    train_meta = source.load(next(s for s, r in source.splits.items() if r == "train")).meta
    jobs = {
        "probe": lambda: probe_core(encode, source, transform),
        "swap": lambda: swap_sensitivity(encode, transform, (heads.df_head, heads.cd_head), world_cfg),
        "core": lambda: core_information(zs_dir, train_meta),
    }
    d = {name: job() for name, job in tqdm(jobs.items(), desc="diagnostics", disable=not progress)}
    write_text(out_json, json.dumps(d, indent=2) + "\n")
    write_text(out_md, to_markdown(d))
    return d
