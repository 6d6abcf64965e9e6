"""The embedded synthetic world: shapes (core features) drawn with non-core features.

A class is a shape. Everything else is non-core: background colour (tied to the class in
the downstream training data: the shortcut ERM latches on to), object colour, position,
size, rotation, noise, and rendering style. Pre-training sees every style; the downstream
train and ID splits see only `train_styles` (filled), the OOD splits only the others, with
backgrounds independent of the class. This is the "style shift" design of
shared/WORLD-NOTES.md, where fine-tuning on one style makes the model forget the others.

Everything is a deterministic function of (WorldConfig, split name). Images are rendered on
a `canvas`-pixel grid, anti-aliased down to `image_size`, and stored as raw uint8 RGB bytes
in Parquet, one file per split, with one row per sample and its group labels.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from drm.world.config import STYLES

# Shapes as star-shaped polygons: vertices (angle in degrees, radius); None = circle.
_STAR = [(90 + 36 * k, 1.0 if k % 2 == 0 else 0.42) for k in range(10)]
_W = 0.32  # half-width of the cross's arms
_CROSS = []
for base in (0, 90, 180, 270):
    a = np.degrees(np.arctan2(_W, 1.0))
    _CROSS += [(base - a, np.hypot(1, _W)), (base + a, np.hypot(1, _W)), (base + 45, _W * np.sqrt(2))]
SHAPES: dict[str, list | None] = {
    "circle": None,
    "triangle": [(90, 1.0), (210, 1.0), (330, 1.0)],
    "square": [(45, 1.0), (135, 1.0), (225, 1.0), (315, 1.0)],
    "diamond": [(0, 0.55), (90, 1.0), (180, 0.55), (270, 1.0)],
    "star": _STAR,
    "cross": _CROSS,
    "arrowhead": [(90, 1.0), (225, 1.0), (270, 0.3), (315, 1.0)],
    "hourglass": [(55, 1.0), (125, 1.0), (180, 0.22), (235, 1.0), (305, 1.0), (0, 0.22)],
}

CORE_TRAITS: dict[str, list[str]] = {
    "circle": ["a smooth round edge", "no corners at all", "a curved outline of constant width"],
    "triangle": ["three straight sides", "three sharp corners", "a pointed top and a flat base"],
    "square": ["four equal straight sides", "four right-angle corners", "a flat top and a flat bottom"],
    "diamond": ["four slanted sides", "a tall narrow rhombus outline", "pointed top and bottom corners"],
    "star": ["five pointed spikes", "alternating tips and notches", "a spiky outline"],
    "cross": ["four arms of equal length", "the outline of a plus sign", "twelve right-angle corners"],
    "arrowhead": ["a sharp tip pointing up", "a notch cut into its base", "two swept-back barbs"],
    "hourglass": ["two triangles meeting at a narrow waist", "a pinched middle", "a wide top and a wide bottom"],
}

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.15, 0.15), "green": (0.15, 0.65, 0.20), "blue": (0.15, 0.25, 0.85),
    "yellow": (0.90, 0.85, 0.15), "purple": (0.55, 0.20, 0.70), "orange": (0.95, 0.55, 0.10),
    "cyan": (0.15, 0.80, 0.85), "gray": (0.50, 0.50, 0.50),
}

SPLITS = {  # name -> role
    "train": "train", "id_val": "id", "id_test": "id", "ood_val": "ood", "ood_test": "ood",
}
_NAME_TEMPLATES = ["a {c}", "a photo of a {c}", "a picture of a {c}", "an image of a {c}", "a drawing of a {c}"]
_BINS = 1440


def _radial_table(vertices) -> np.ndarray:
    """r(theta) of a star-shaped polygon on _BINS angles (exact straight edges)."""
    theta = np.linspace(0, 2 * np.pi, _BINS, endpoint=False)
    if vertices is None:
        return np.full(_BINS, 0.85)
    ang = np.radians([a % 360 for a, _ in vertices])
    rad = np.array([r for _, r in vertices])
    order = np.argsort(ang)
    ang, rad = ang[order], rad[order]
    a1, r1 = ang, rad
    a2, r2 = np.roll(ang, -1), np.roll(rad, -1)
    a2 = np.where(a2 <= a1, a2 + 2 * np.pi, a2)
    out = np.empty(_BINS)
    for i, t in enumerate(theta):
        tt = np.where(t < a1, t + 2 * np.pi, t)
        k = np.nonzero((tt >= a1) & (tt < a2))[0][0]
        out[i] = r1[k] * r2[k] * np.sin(a2[k] - a1[k]) / (
            r1[k] * np.sin(tt[k] - a1[k]) + r2[k] * np.sin(a2[k] - tt[k]))
    return out


_TABLES = {name: _radial_table(v) for name, v in SHAPES.items()}
CLASSNAMES = list(SHAPES)


def _split_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


def _colours(rng, bg: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """Object colours at about the given contrast (RMS RGB distance) from each background."""
    n = len(bg)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    fg = bg + d * contrast[:, None] * np.sqrt(3)
    # Reflect what falls outside [0, 1] back inside: keeps most of the contrast.
    fg = np.abs(fg)
    fg = np.where(fg > 1, 2 - fg, fg)
    return np.clip(fg, 0, 1)


def render(shape_idx, style_idx, bg, fg, cx, cy, radius, rot, noise, rng, canvas=64, image_size=32):
    """Render a batch of images -> uint8 array (n, image_size, image_size, 3).

    cx, cy, radius in canvas pixels; rot in radians; bg, fg RGB in [0, 1]."""
    n = len(shape_idx)
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32) + 0.5
    tables = np.stack([_TABLES[c] for c in CLASSNAMES]).astype(np.float32)

    def boundary(dx, dy, rot_, scale, shapes):
        rho = np.hypot(dx, dy)
        theta = np.mod(np.arctan2(-dy, dx) - rot_.astype(np.float32)[:, None, None], np.float32(2 * np.pi))
        b = np.minimum((theta * np.float32(_BINS / (2 * np.pi))).astype(np.int32), _BINS - 1)
        r = tables[shapes[:, None, None], b] * scale.astype(np.float32)[:, None, None]
        return rho, r  # inside: rho <= r; signed distance ~ rho - r

    dx = xx[None] - cx.astype(np.float32)[:, None, None]
    dy = yy[None] - cy.astype(np.float32)[:, None, None]
    rho, r = boundary(dx, dy, rot, radius, shape_idx)
    inside = rho <= r
    dist = rho - r
    t = np.maximum(1.6, 0.12 * radius)[:, None, None]
    style = np.asarray(style_idx)[:, None, None]
    mask = np.zeros((n, canvas, canvas), bool)
    st = {s: i for i, s in enumerate(STYLES)}
    mask |= (style == st["filled"]) & inside
    mask |= (style == st["inverted"]) & inside
    mask |= (style == st["outline"]) & (np.abs(dist) <= t)
    theta_px = np.arctan2(dy, dx)
    dashes = np.cos(theta_px * 14) > 0.1
    mask |= (style == st["dashed"]) & (np.abs(dist) <= 1.2 * t) & dashes
    phi = rng.uniform(0, np.pi, size=n).astype(np.float32)[:, None, None]
    stripes = np.sin((dx * np.cos(phi) + dy * np.sin(phi)) * 2 * np.pi / 6.0) > 0
    mask |= (style == st["striped"]) & ((inside & stripes) | (np.abs(dist) <= 1.0))
    sketch = np.nonzero(np.asarray(style_idx) == st["sketch"])[0]
    if len(sketch):  # three jittered thin outlines, computed for the sketch images only
        k = len(sketch)
        sk = np.zeros((k, canvas, canvas), bool)
        for _ in range(3):
            jx = rng.normal(0, 1.2, k).astype(np.float32)[:, None, None]
            jy = rng.normal(0, 1.2, k).astype(np.float32)[:, None, None]
            jr = rot[sketch] + rng.normal(0, 0.08, k)
            js = radius[sketch] * rng.uniform(0.92, 1.06, k)
            rho_j, r_j = boundary(dx[sketch] - jx, dy[sketch] - jy, jr, js, shape_idx[sketch])
            sk |= np.abs(rho_j - r_j) <= 1.0
        mask[sketch] |= sk
    inv = (style == st["inverted"])[:, :, :, None]
    m = mask[..., None]
    bgc = bg.astype(np.float32)[:, None, None, :]
    fgc = fg.astype(np.float32)[:, None, None, :]
    img = np.where(m, fgc, bgc)
    img = np.where(inv, np.where(m, bgc, fgc), img)  # inverted: object in bg colour on fg canvas
    f = canvas // image_size
    img = img.reshape(n, image_size, f, image_size, f, 3).mean(axis=(2, 4))
    img = img + rng.standard_normal(size=img.shape, dtype=np.float32) * noise.astype(np.float32)[:, None, None, None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _sample_split(cfg, split: str, n: int):
    """Sample attributes for one split and render it. Returns (images, attributes dict)."""
    rng = _split_rng(cfg.seed, split)
    C = len(CLASSNAMES)
    colours = np.array(list(PALETTE.values()))
    names = list(PALETTE)
    y = rng.integers(0, C, n)
    role = SPLITS.get(split, "pretrain")
    train_styles = [STYLES.index(s) for s in cfg.train_styles]
    other_styles = [i for i in range(len(STYLES)) if i not in train_styles]
    if role in ("train", "id"):
        style = rng.choice(train_styles, n)
        match = rng.random(n) < cfg.spurious_rate
    elif role == "ood":
        style = rng.choice(other_styles, n)
        match = np.zeros(n, bool)
    else:  # pretrain: every style; context bias only where the caption is the bare name
        style = rng.integers(0, len(STYLES), n)
        match = np.zeros(n, bool)
    kind = np.full(n, "", dtype=object)
    if role == "pretrain":
        # Caption kinds; a bare-name caption comes with its class's background colour
        # caption_context_rate of the time (the mild context bias of web captions).
        u = rng.random(n)
        kind = np.where(u < 0.5, "name", np.where(u < 0.7, "traits", "name_traits")).astype(object)
        match = (kind == "name") & (rng.random(n) < cfg.caption_context_rate)
    bg_idx = np.where(match, y % len(names), rng.integers(0, len(names), n))
    canvas = cfg.canvas
    radius = rng.uniform(*cfg.radius, n) * canvas
    contrast = rng.uniform(*cfg.contrast, n)
    clarity = np.array(["clear"] * n, dtype=object)
    if role != "pretrain" and cfg.unclear_rate > 0:
        unclear = rng.random(n) < cfg.unclear_rate
        small = unclear & (rng.random(n) < 0.5)
        faint = unclear & ~small
        radius = np.where(small, rng.uniform(0.18, 0.22, n) * canvas, radius)
        contrast = np.where(faint, rng.uniform(0.10, 0.18, n), contrast)
        clarity[small], clarity[faint] = "small", "faint"
    margin = radius + 2
    cx = rng.uniform(margin, canvas - margin)
    cy = rng.uniform(margin, canvas - margin)
    rot = rng.uniform(-0.25, 0.25, n)
    noise = rng.uniform(*cfg.noise, n)
    bg = colours[bg_idx]
    fg = _colours(rng, bg, contrast)
    attrs = dict(y=y, caption_kind=kind, style=np.array(STYLES)[style], bg=np.array(names)[bg_idx],
                 bg_match=(bg_idx == y % len(names)), clarity=clarity, radius=radius / canvas,
                 contrast=contrast, rot=rot, noise=noise)
    images = np.empty((n, cfg.image_size, cfg.image_size, 3), np.uint8)
    chunk = 1000
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        images[sl] = render(y[sl], style[sl], bg[sl], fg[sl], cx[sl], cy[sl], radius[sl], rot[sl],
                            noise[sl], rng, canvas, cfg.image_size)
    return images, attrs, rng


def captions_for(rng, y, style, kind) -> list[str]:
    """Pre-training captions: the class name, its traits, or both ("name: trait"); a style
    word in half of the names; the background colour is never named."""
    out = []
    for yi, si, k in zip(y, style, kind):
        c = CLASSNAMES[yi]
        traits = CORE_TRAITS[c]
        t = traits[rng.integers(len(traits))]
        name = c if rng.random() < 0.5 else f"{si} {c}"
        if k == "name":
            cap = _NAME_TEMPLATES[rng.integers(len(_NAME_TEMPLATES))].format(c=name)
        elif k == "traits":
            cap = f"a shape with {t}"
        else:
            cap = f"a {name}: {t}"
        out.append(cap)
    return out


def generate(cfg, out_dir, progress: bool = True) -> dict:
    """Render every split of the world into out_dir (Parquet per split + world.json)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"pretrain": cfg.n_pretrain, "train": cfg.n_train, "id_val": cfg.n_id_val,
             "id_test": cfg.n_id_test, "ood_val": cfg.n_ood_val, "ood_test": cfg.n_ood_test}
    for split in tqdm(sizes, desc="world: render splits", disable=not progress):
        images, attrs, rng = _sample_split(cfg, split, sizes[split])
        n = len(images)
        cols = {"id": [f"{split}-{i:06d}" for i in range(n)],
                "y": attrs["y"].astype(np.int32),
                "image": [images[i].tobytes() for i in range(n)]}
        for k, v in attrs.items():
            if k != "y" and (k != "caption_kind" or split == "pretrain"):
                cols[k] = v.tolist() if v.dtype == object else v
        if split == "pretrain":
            cols["caption"] = captions_for(rng, attrs["y"], attrs["style"], attrs["caption_kind"])
        table = pa.table(cols)
        pq.write_table(table, out / f"{split}.parquet")
    meta = {
        "classnames": CLASSNAMES, "core_traits": CORE_TRAITS, "styles": list(STYLES),
        "train_styles": list(cfg.train_styles), "palette": list(PALETTE),
        "splits": SPLITS, "image_size": cfg.image_size,
        "group_columns": ["style", "bg", "bg_match", "clarity"],
    }
    (out / "world.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
